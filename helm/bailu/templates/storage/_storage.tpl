{{/* Claim name of a shared volume: (dict "root" $ "name" "model-store" "volume" .Values.storage.modelStore). */}}
{{- define "bailu.storage.claimName" -}}
{{- .volume.existingClaim | default (include "bailu.componentName" (dict "root" .root "name" .name)) -}}
{{- end -}}

{{/* A PersistentVolumeClaim of the storage section, unless an existing claim is used. */}}
{{- define "bailu.storage.pvc" -}}
{{- if and .volume.enabled (not .volume.existingClaim) }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "bailu.storage.claimName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "bailu.labels" (dict "root" .root "component" "storage") | nindent 4 }}
  {{- if or .volume.keep .volume.annotations }}
  annotations:
    {{- if .volume.keep }}
    helm.sh/resource-policy: keep
    {{- end }}
    {{- with .volume.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  accessModes:
    {{- toYaml .volume.accessModes | nindent 4 }}
  {{- include "bailu.storage.className" .volume.storageClassName }}
  resources:
    requests:
      storage: {{ .volume.size }}
{{- end }}
{{- end -}}

{{/* storageClassName of a claim: "" → the cluster's default (omitted); "-" → "" (no dynamic provisioning). */}}
{{- define "bailu.storage.className" -}}
{{- if eq . "-" }}
  storageClassName: ""
{{- else if . }}
  storageClassName: {{ . | quote }}
{{- end }}
{{- end -}}
