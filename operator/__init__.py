"""The kubeinfer operator: a kopf operator turning InferenceService resources into runtime Deployments."""
