{{/*
Names, labels, images and small shared pieces of the Bailu chart.
Each component has its own folder under templates/; components use only these helpers to name
and label their objects, so that selectors and NetworkPolicies agree everywhere.
*/}}

{{/* The chart's name ("bailu" unless nameOverride). */}}
{{- define "bailu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-bailu" (or the release name when it already contains the chart's name): the prefix of every object. */}}
{{- define "bailu.fullname" -}}
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

{{/* A component's object name: (dict "root" $ "name" "gateway") → "<fullname>-gateway". */}}
{{- define "bailu.componentName" -}}
{{- printf "%s-%s" (include "bailu.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "bailu-<chart version>": the helm.sh/chart label. */}}
{{- define "bailu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the release's pods: name and instance (every Bailu pod has them). */}}
{{- define "bailu.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bailu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "gateway"). */}}
{{- define "bailu.selectorLabels" -}}
{{ include "bailu.releaseSelectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects: (dict "root" $ "component" "gateway"). */}}
{{- define "bailu.labels" -}}
helm.sh/chart: {{ include "bailu.chart" .root }}
{{ include "bailu.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "bailu.name" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one worker pool: (dict "root" $ "pool" $pool). */}}
{{- define "bailu.worker.poolSelectorLabels" -}}
{{ include "bailu.selectorLabels" (dict "root" .root "component" "worker") }}
bailu/worker-pool: {{ .pool.name }}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.gateway.image). The tag defaults to appVersion. */}}
{{- define "bailu.image" -}}
{{- $registry := .root.Values.imageRegistry | trimSuffix "/" -}}
{{- $ref := printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- if $registry -}}
{{- printf "%s/%s" $registry $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{/* Fixed ports of the services (their settings' defaults; the chart also sets them explicitly). */}}
{{- define "bailu.gateway.port" -}}8000{{- end -}}
{{- define "bailu.worker.grpcPort" -}}50051{{- end -}}
{{- define "bailu.worker.httpPort" -}}9091{{- end -}}
{{- define "bailu.redis.port" -}}6379{{- end -}}
{{- define "bailu.collector.httpPort" -}}9092{{- end -}}

{{/* Object names shared between components. */}}
{{- define "bailu.gateway.fullname" -}}{{ include "bailu.componentName" (dict "root" . "name" "gateway") }}{{- end -}}
{{- define "bailu.worker.serviceName" -}}{{ include "bailu.componentName" (dict "root" . "name" "worker") }}{{- end -}}
{{- define "bailu.redis.fullname" -}}{{ include "bailu.componentName" (dict "root" . "name" "redis") }}{{- end -}}
{{- define "bailu.collector.fullname" -}}{{ include "bailu.componentName" (dict "root" . "name" "collector") }}{{- end -}}

{{- define "bailu.trainer.fullname" -}}{{ include "bailu.componentName" (dict "root" . "name" "trainer") }}{{- end -}}

{{/*
Name of the trainer CronJob whose job template training runs are created from: collector.trainerCronJob,
or "<fullname>-trainer" (the CronJob the trainer component creates).
*/}}
{{- define "bailu.trainer.cronJobName" -}}
{{- .Values.collector.trainerCronJob | default (include "bailu.trainer.fullname" .) -}}
{{- end -}}

{{/*
The model registry (trained adapters with manifests and aliases) lives in the model store volume, at
registry.path: the trainer writes it, the workers follow it. Its directory as mounted in those pods, or
"" when there is no model store (then no registry).
*/}}
{{- define "bailu.registry.dir" -}}
{{- if .Values.storage.modelStore.enabled -}}
{{- printf "%s/%s" (.Values.storage.modelStore.mountPath | trimSuffix "/") (.Values.registry.path | trimPrefix "/" | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with the API keys (existing or generated). */}}
{{- define "bailu.gateway.apiKeysSecretName" -}}
{{- .Values.gateway.apiKeys.existingSecret | default (include "bailu.componentName" (dict "root" . "name" "api-keys")) -}}
{{- end -}}

{{/*
A ServiceAccount's name: (dict "serviceAccount" $values "default" $objectName). Its own name, else the
component's object name when the chart creates it, else "default".
*/}}
{{- define "bailu.serviceAccountName" -}}
{{- if .serviceAccount.create -}}
{{- .serviceAccount.name | default .default -}}
{{- else -}}
{{- .serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount names of the components. */}}
{{- define "bailu.gateway.serviceAccountName" -}}
{{- include "bailu.serviceAccountName" (dict "serviceAccount" .Values.gateway.serviceAccount "default" (include "bailu.gateway.fullname" .)) -}}
{{- end -}}

{{- define "bailu.worker.serviceAccountName" -}}
{{- $worker := dict -}}
{{- include "bailu.worker.values" (dict "root" . "out" $worker) -}}
{{- include "bailu.serviceAccountName" (dict "serviceAccount" $worker.serviceAccount "default" (include "bailu.worker.serviceName" .)) -}}
{{- end -}}

{{- define "bailu.collector.serviceAccountName" -}}
{{- include "bailu.serviceAccountName" (dict "serviceAccount" .Values.collector.serviceAccount "default" (include "bailu.collector.fullname" .)) -}}
{{- end -}}

{{- define "bailu.trainer.serviceAccountName" -}}
{{- include "bailu.serviceAccountName" (dict "serviceAccount" .Values.trainer.serviceAccount "default" (include "bailu.trainer.fullname" .)) -}}
{{- end -}}

{{- define "bailu.redis.serviceAccountName" -}}
{{- include "bailu.serviceAccountName" (dict "serviceAccount" .Values.redis.serviceAccount "default" (include "bailu.redis.fullname" .)) -}}
{{- end -}}

{{/*
Redis as the services will use it: its URL (without the password) and the Secret holding the
password (name and key; empty name: no password).
*/}}
{{- define "bailu.redis.url" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:%s/0" (include "bailu.redis.fullname" .) .Release.Namespace .Values.clusterDomain (include "bailu.redis.port" .) -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{- define "bailu.redis.passwordSecretName" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- .Values.redis.auth.existingSecret | default (include "bailu.redis.fullname" .) -}}
{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
Environment variables that give a container Redis's URL as the variable `.name`, with the password
(from its Secret, through REDIS_PASSWORD and Kubernetes' $(VAR) expansion) inside the URL:
(dict "root" $ "name" "BAILU_GATEWAY_REDIS_URL"). The password must be URL-safe (a generated one is).
*/}}
{{- define "bailu.redis.urlEnv" -}}
{{- $url := include "bailu.redis.url" .root -}}
{{- $secret := include "bailu.redis.passwordSecretName" .root -}}
{{- if and $url $secret -}}
{{- $parts := splitList "://" $url -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "bailu.redis.passwordSecretKey" .root }}
- name: {{ .name }}
  value: {{ printf "%s://:$(REDIS_PASSWORD)@%s" (first $parts) (join "://" (rest $parts)) | quote }}
{{- else if $url }}
- name: {{ .name }}
  value: {{ $url | quote }}
{{- end }}
{{- end -}}

{{- define "bailu.redis.passwordSecretKey" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
{{- .Values.redis.external.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/*
The value of a settings field as its service reads it from the environment: lists joined with
commas, maps as JSON, booleans as true/false, and whole numbers without an exponent (Helm reads
numbers in values files as floats, which would print 1048576 as 1.048576e+06).
*/}}
{{- define "bailu.settingValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- join "," $v -}}
{{- else if kindIs "map" $v -}}
{{- toJson $v -}}
{{- else if and (kindIs "float64" $v) (eq (floor $v) $v) -}}
{{- printf "%d" (int64 $v) -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/*
Environment variables of a settings map: (dict "prefix" "BAILU_WORKER_" "settings" $map), sorted
by name. The schema restricts the map's keys to the settings class's fields.
*/}}
{{- define "bailu.settingsEnv" -}}
{{- $settings := .settings -}}
{{- range $key := keys $settings | sortAlpha }}
- name: {{ printf "%s%s" $.prefix (upper $key) }}
  value: {{ include "bailu.settingValue" (get $settings $key) | quote }}
{{- end }}
{{- end -}}

{{/*
Variables that point every cache at the writable /tmp volume (the root filesystem is read-only),
and keep Hugging Face libraries off the network: models come from the image or the model store.
*/}}
{{- define "bailu.runtimeEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: /tmp/.cache/huggingface
- name: HF_HUB_OFFLINE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/*
The NetworkPolicy ingress rule that lets Prometheus (networkPolicy.metrics.from) scrape a pod's
metrics port, or nothing when scraping is off: (dict "root" $ "port" "http-metrics").
*/}}
{{- define "bailu.networkPolicy.metricsIngress" -}}
{{- $metrics := .root.Values.networkPolicy.metrics -}}
{{- if $metrics.enabled }}
- from:
    {{- toYaml $metrics.from | nindent 4 }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* The /tmp emptyDir of a pod (volume). */}}
{{- define "bailu.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* A pod's nodeSelector, tolerations and affinity, each only when set: (the component's values). */}}
{{- define "bailu.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A container's resources with `gpus` GPUs of `gpuResourceName` added to its requests and limits (when
gpus > 0), as YAML: (the values of a worker pool or of the trainer).
*/}}
{{- define "bailu.gpuResources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $requests := get $resources "requests" | default dict -}}
{{- $_ := set $limits .gpuResourceName (int .gpus) -}}
{{- $_ := set $requests .gpuResourceName (int .gpus) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- $_ := set $resources "requests" $requests -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* topologySpreadConstraints with the component's selector filled in where a constraint has none: (dict "constraints" $list "selector" $labelsYaml). */}}
{{- define "bailu.topologySpread" -}}
{{- $selector := fromYaml .selector -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* The gateway's keys file: (dict "key" $plainKey "extraHashes" $list) → one `sha256:<hex>` per line. */}}
{{- define "bailu.gateway.apiKeysFile" -}}
# API key hashes read by the Bailu gateway: sha256 of each key, one per line.
sha256:{{ sha256sum .key }} generated-by-helm
{{- range .extraHashes }}
{{ . }}
{{- end }}
{{ end -}}
