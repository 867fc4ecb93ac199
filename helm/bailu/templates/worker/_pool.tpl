{{/*
Worker pools: each entry of worker.pools over worker.defaults (see bailu.worker.values).

bailu.worker.pool fills "out" (a dict) with one pool: (dict "root" $ "pool" $entry "out" (dict)).
A key given in the entry replaces the default's, except the maps listed in $merged, which are
merged key by key (the entry wins). Merging by hand, unlike sprig's mergeOverwrite, keeps an
entry's false and 0 (e.g. replicas: 0).
*/}}
{{- define "bailu.worker.pool" -}}
{{- $merged := list "settings" "nodeSelector" "podLabels" "podAnnotations" -}}
{{- $worker := dict -}}
{{- include "bailu.worker.values" (dict "root" .root "out" $worker) -}}
{{- $defaults := deepCopy $worker.defaults -}}
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
{{- /* A pool without an image of its own whose engine has an image (worker.engineImages) runs that
repository, with worker.defaults.image's tag and pull policy. */ -}}
{{- $engineImages := $worker.engineImages | default dict -}}
{{- $engine := .pool.engine | default "" -}}
{{- if and (not (hasKey .pool "image")) (hasKey $engineImages $engine) -}}
{{- $image := deepCopy $defaults.image -}}
{{- $_ := set $image "repository" (get $engineImages $engine) -}}
{{- $_ := set $.out "image" $image -}}
{{- end -}}
{{- end -}}

{{/*
Engines the worker runs as a child process (the engine's own OpenAI-compatible server on localhost):
they get the engine-server settings (BAILU_WORKER_ENGINE_*, TENSOR_PARALLEL_SIZE). Of those, the GPU
engines run in an image of their own (the engine's official image plus the worker, whose ENTRYPOINT
starts the worker) and need GPUs; swift runs in the worker image, on CPU or GPU.
*/}}
{{- define "bailu.worker.engineServers" -}}vllm sglang lmdeploy swift{{- end -}}
{{- define "bailu.worker.gpuEngines" -}}vllm sglang lmdeploy{{- end -}}

{{/*
Seconds the pool's startup probe lets a pod start (initialDelaySeconds + periodSeconds ×
failureThreshold, with Kubernetes' defaults for what is not given): (dict "probe" $pool.startupProbe).
*/}}
{{- define "bailu.worker.startupBudget" -}}
{{- $p := .probe | default dict -}}
{{- add (int ($p.initialDelaySeconds | default 0)) (mul (int ($p.periodSeconds | default 10)) (int ($p.failureThreshold | default 3))) -}}
{{- end -}}

{{/* GPUs one engine server shards the model over: tensorParallelSize, or (0) the pool's gpus, at least 1. */}}
{{- define "bailu.worker.tensorParallelSize" -}}
{{- $tp := int (.tensorParallelSize | default 0) -}}
{{- if eq $tp 0 -}}
{{- $tp = max 1 (int .gpus) -}}
{{- end -}}
{{- $tp -}}
{{- end -}}

{{/* Checks across pools and sections that the schema cannot express; fails with a message. */}}
{{- define "bailu.worker.validate" -}}
{{- $names := list -}}
{{- $worker := dict -}}
{{- include "bailu.worker.values" (dict "root" . "out" $worker) -}}
{{- range $worker.pools -}}
{{- if has .name $names -}}
{{- fail (printf "worker.pools: the pool name %q is used twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- $model := .model | default dict -}}
{{- if and (eq ($model.source | default "") "modelStore") (not $.Values.storage.modelStore.enabled) -}}
{{- fail (printf "worker.pools[%s]: model.source is modelStore but storage.modelStore.enabled is false" .name) -}}
{{- end -}}
{{- range $adapter, $path := .adapters | default dict -}}
{{- if and (not (hasPrefix "/" $path)) (not $.Values.storage.modelStore.enabled) -}}
{{- fail (printf "worker.pools: adapter %q has a path relative to the model store, but storage.modelStore.enabled is false" $adapter) -}}
{{- end -}}
{{- end -}}
{{- $pool := dict -}}
{{- include "bailu.worker.pool" (dict "root" $ "pool" . "out" $pool) -}}
{{- if has $pool.engine (splitList " " (include "bailu.worker.gpuEngines" $)) -}}
{{- if lt (int $pool.gpus) 1 -}}
{{- fail (printf "worker.pools[%s]: the %s engine runs on GPUs: set gpus (1 or more)" $pool.name $pool.engine) -}}
{{- end -}}
{{- if gt (int ($pool.tensorParallelSize | default 0)) (int $pool.gpus) -}}
{{- fail (printf "worker.pools[%s]: tensorParallelSize %d is more than the pool's gpus (%d): the engine shards the model over the GPUs of its own pod" $pool.name (int $pool.tensorParallelSize) (int $pool.gpus)) -}}
{{- end -}}
{{- end -}}
{{- $enginePort := int (dig "engine_port" 0 ($pool.settings | default dict)) -}}
{{- range $what, $port := dict "gRPC" (include "bailu.worker.grpcPort" $) "HTTP (probes and metrics)" (include "bailu.worker.httpPort" $) -}}
{{- if eq $enginePort (int $port) -}}
{{- fail (printf "worker.pools[%s]: settings.engine_port %d is the worker's %s port: the engine server needs a port of its own in the pod (or 0: a free one)" $pool.name $enginePort $what) -}}
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
