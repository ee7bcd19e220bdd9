{{/* Names, labels and image references shared by every template. */}}

{{- define "kubeinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubeinfer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects: <fullname>-operator. */}}
{{- define "kubeinfer.operator.fullname" -}}
{{- printf "%s-operator" (include "kubeinfer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubeinfer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: kubeinfer
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubeinfer.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeinfer.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubeinfer.operator.labels" -}}
{{ include "kubeinfer.labels" . }}
{{ include "kubeinfer.operator.selectorLabels" . }}
{{- end -}}

{{- define "kubeinfer.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "kubeinfer.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to the appVersion, followed by the
     optional third argument: "-cpu" for the cpu runtime image). */}}
{{- define "kubeinfer.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $suffix := "" -}}
{{- if gt (len .) 2 -}}{{- $suffix = index . 2 -}}{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default (printf "%s%s" $root.Chart.AppVersion $suffix) $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels the operator puts on every runtime pod; the PodMonitor selects on them. */}}
{{- define "kubeinfer.runtime.selectorLabels" -}}
app.kubernetes.io/name: kubeinfer-runtime
{{- end -}}

{{- define "kubeinfer.dashboards.namespace" -}}
{{- default .Release.Namespace .Values.monitoring.dashboards.namespace -}}
{{- end -}}
