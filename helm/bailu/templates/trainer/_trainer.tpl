{{/*
The trainer: which worker pool's base model it adapts, and the checks the schema cannot express.
*/}}

{{/*
The worker pool whose base model the trainer trains adapters for (merged over worker.defaults, as JSON):
trainer.workerPool, or the first pool that serves a model (source image or modelStore). "{}" when none.
*/}}
{{- define "bailu.trainer.poolJson" -}}
{{- $wanted := .Values.trainer.workerPool -}}
{{- $found := dict -}}
{{- $worker := dict -}}
{{- include "bailu.worker.values" (dict "root" . "out" $worker) -}}
{{- range $worker.pools -}}
{{- $source := (.model | default dict).source | default "none" -}}
{{- if and (not (hasKey $found "name")) (or (eq .name $wanted) (and (not $wanted) (ne $source "none"))) -}}
{{- include "bailu.worker.pool" (dict "root" $ "pool" . "out" $found) -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* Where the trainer finds the base checkpoint: copied from the pool's image into the scratch volume. */}}
{{- define "bailu.trainer.imageModelDir" -}}/tmp/base-model{{- end -}}

{{/* Fails with a message when the trainer cannot run with these values. */}}
{{- define "bailu.trainer.validate" -}}
{{- $t := .Values.trainer -}}
{{- if $t.enabled -}}
{{- if not .Values.storage.modelStore.enabled -}}
{{- fail "trainer.enabled is true but storage.modelStore.enabled is false: the trainer publishes adapters to the model registry on that volume (enable it, or set trainer.enabled=false)" -}}
{{- end -}}
{{- if not .Values.storage.datasets.enabled -}}
{{- fail "trainer.enabled is true but storage.datasets.enabled is false: the trainer reads the collector's dataset versions from that volume (enable it, or set trainer.enabled=false)" -}}
{{- end -}}
{{- $pool := include "bailu.trainer.poolJson" . | fromJson -}}
{{- if not $pool.name -}}
{{- if $t.workerPool -}}
{{- fail (printf "trainer.workerPool %q is not the name of a pool in worker.pools" $t.workerPool) -}}
{{- else -}}
{{- fail "trainer.enabled is true but no worker pool serves a model (source image or modelStore) to train an adapter for: add one, name it in trainer.workerPool, or set trainer.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- if eq (dig "model" "source" "none" $pool) "none" -}}
{{- fail (printf "trainer.workerPool %q serves no model (model.source none): the trainer needs a base checkpoint (image or modelStore)" $pool.name) -}}
{{- end -}}
{{- end -}}
{{- $c := .Values.collector -}}
{{- if and $c.enabled $c.startTrainingRuns (not $t.enabled) (not $c.trainerCronJob) -}}
{{- fail "collector.startTrainingRuns is true but there is no trainer CronJob to start runs from: set trainer.enabled=true, or name your own CronJob in collector.trainerCronJob" -}}
{{- end -}}
{{- end -}}
