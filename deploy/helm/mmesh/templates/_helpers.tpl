{{/* Labels on every object of the release. */}}
{{- define "mmesh.labels" -}}
app.kubernetes.io/part-of: mmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The mmesh image. */}}
{{- define "mmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
