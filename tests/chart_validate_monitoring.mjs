// Validate monitoring.coreos.com objects (PodMonitor, ServiceMonitor) against the Prometheus Operator's CRD
// schemas, as compiled into @kubernetes-models/prometheus-operator (installed by scripts/install-test-tools.sh).
// Usage: node chart_validate_monitoring.mjs NODE_PREFIX < objects.json   (a JSON list of objects)
// Prints one JSON line per object: {"kind", "name", "error"} with error null when valid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const prefix = process.argv[2];
const entry = join(prefix, "node_modules", "@kubernetes-models", "prometheus-operator", "monitoring.coreos.com",
  "index.js");
const models = await import(pathToFileURL(entry).href);  // { v1: { PodMonitor, ... }, v1alpha1, ... }
const objects = JSON.parse(readFileSync(0, "utf8"));
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const Model = group === "monitoring.coreos.com" ? models[version]?.[obj.kind] : undefined;
  let error = null;
  if (!Model) {
    error = `no model for ${obj.apiVersion} ${obj.kind}`;
  } else {
    try {
      new Model(obj).validate();
    } catch (exc) {
      error = String(exc.message || exc);
    }
  }
  console.log(JSON.stringify({ kind: obj.kind, name: obj.metadata?.name, error }));
}
