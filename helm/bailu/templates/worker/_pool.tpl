{{/*
Worker pools: each entry of .Values.workers over .Values.workerDefaults.

bailu.worker.pool fills "out" (a dict) with one pool: (dict "root" $ "pool" $entry "out" (dict)).
A key given in the entry replaces the default's, except the maps listed in $merged, which are
merged key by key (the entry wins). Merging by hand, unlike sprig's mergeOverwrite, keeps an
entry's false and 0 (e.g. replicas: 0).
*/}}
{{- define "bailu.worker.pool" -}}
{{- $merged := list "settings" "nodeSelector" "podLabels" "podAnnotations" -}}
{{- $defaults := deepCopy .root.Values.workerDefaults -}}
{{- range $key, $value := $defaults -}}
{{- $_ := set $.out $key $value -}}
{{- end -}}
{{- range $key, $value := .pool -}}
{{- if and (has $key $merged) (kindIs "map" $value) -}}
{{- $map := deepCopy (get $defaults $key | default dict) -}}
{{- range $k, $v := $value -}}
{{- $_ := set $map $k $v -}}
{{- end -}}
{{- $_ := set $.out $key $map -}}
{{- else -}}
{{- $_ := set $.out $key (deepCopy $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks across pools and sections that the schema cannot express; fails with a message. */}}
{{- define "bailu.worker.validate" -}}
{{- $names := list -}}
{{- range .Values.workers -}}
{{- if has .name $names -}}
{{- fail (printf "workers: the pool name %q is used twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- $model := .model | default dict -}}
{{- if and (eq ($model.source | default "") "modelStore") (not $.Values.storage.modelStore.enabled) -}}
{{- fail (printf "workers[%s]: model.source is modelStore but storage.modelStore.enabled is false" .name) -}}
{{- end -}}
{{- range $adapter, $path := .adapters | default dict -}}
{{- if and (not (hasPrefix "/" $path)) (not $.Values.storage.modelStore.enabled) -}}
{{- fail (printf "workers: adapter %q has a path relative to the model store, but storage.modelStore.enabled is false" $adapter) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A path inside the model store unless it is absolute: (dict "root" $ "path" $p). */}}
{{- define "bailu.worker.storePath" -}}
{{- if hasPrefix "/" .path -}}
{{- .path -}}
{{- else -}}
{{- printf "%s/%s" (.root.Values.storage.modelStore.mountPath | trimSuffix "/") .path -}}
{{- end -}}
{{- end -}}
