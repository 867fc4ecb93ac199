{{/*
The worker values: .Values.worker, with the top-level keys of charts before 0.5.0 (deprecated) applied.
*/}}

{{/* The deprecated top-level keys → their place under .Values.worker (YAML, for fromYaml). */}}
{{- define "bailu.worker.renamedKeys" -}}
workerDefaults: defaults
workerServiceAccount: serviceAccount
workerService: service
workerEngineImages: engineImages
workers: pools
{{- end -}}

{{/*
The worker values as the templates use them: (dict "root" $ "out" (dict)) fills "out" with defaults,
serviceAccount, service, engineImages and pools. A deprecated key the user set wins over its new place
where it was set, as its value won over the chart's defaults before: a map (workerDefaults, ...) is
merged into it key by key and deeply (see bailu.mergeValues); the list `workers` replaces worker.pools.
Only the user sets the old keys: values.yaml no longer has them.
*/}}
{{- define "bailu.worker.values" -}}
{{- range $key, $value := .root.Values.worker | default dict -}}
{{- $_ := set $.out $key $value -}}
{{- end -}}
{{- range $old, $new := include "bailu.worker.renamedKeys" . | fromYaml -}}
{{- if hasKey $.root.Values $old -}}
{{- $value := get $.root.Values $old -}}
{{- $current := get $.out $new -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $merged := deepCopy $current -}}
{{- include "bailu.mergeValues" (dict "dst" $merged "src" $value) -}}
{{- $_ := set $.out $new $merged -}}
{{- else -}}
{{- $_ := set $.out $new $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The deprecated top-level keys the user set, one "<old> → worker.<new>" per line (empty: none), for the
install notes.
*/}}
{{- define "bailu.worker.deprecatedKeysUsed" -}}
{{- range $old, $new := include "bailu.worker.renamedKeys" . | fromYaml -}}
{{- if hasKey $.Values $old }}
{{ $old }} → worker.{{ $new }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Merges the map "src" into the map "dst" in place, as Helm merges a values file over the chart's values:
key by key, maps deeply, anything else (lists included) replaced; a null in src removes the key.
(dict "dst" $dst "src" $src).
*/}}
{{- define "bailu.mergeValues" -}}
{{- range $key, $value := .src -}}
{{- if kindIs "invalid" $value -}}
{{- $_ := unset $.dst $key -}}
{{- else if and (kindIs "map" $value) (kindIs "map" (get $.dst $key)) -}}
{{- include "bailu.mergeValues" (dict "dst" (get $.dst $key) "src" $value) -}}
{{- else -}}
{{- $_ := set $.dst $key (deepCopy $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
