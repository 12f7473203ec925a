{{- define "mock-device.namespace" -}}{{ .Values.namespace.name | default .Release.Namespace }}{{- end -}}
{{- define "mock-device.sa" -}}{{ .Values.serviceAccount.name | default "mock-accel-dra" }}{{- end -}}
{{- define "mock-device.labels" -}}
app.kubernetes.io/name: mock-accel-dra
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
