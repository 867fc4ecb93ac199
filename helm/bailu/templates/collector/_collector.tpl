{{/*
The feedback collector: checks that the schema cannot express, and whether it starts training runs.
*/}}

{{/* "true" when the collector is deployed and starts training Jobs (runner kubernetes), else "". */}}
{{- define "bailu.collector.startsRuns" -}}
{{- if and .Values.collector.enabled .Values.collector.startTrainingRuns -}}true{{- end -}}
{{- end -}}

{{/* Fails with a message when the collector cannot run with these values. */}}
{{- define "bailu.collector.validate" -}}
{{- $c := .Values.collector -}}
{{- if $c.enabled -}}
{{- if not .Values.storage.datasets.enabled -}}
{{- fail "collector.enabled is true but storage.datasets.enabled is false: the collector writes its datasets to that volume (enable it, or set collector.enabled=false)" -}}
{{- end -}}
{{- if not (include "bailu.redis.url" .) -}}
{{- fail "collector.enabled is true but there is no Redis: the collector reads the feedback stream from it (set redis.enabled, or redis.external.url, or collector.enabled=false)" -}}
{{- end -}}
{{- if and $c.startTrainingRuns (eq (include "bailu.collector.serviceAccountName" .) "default") -}}
{{- fail "collector.startTrainingRuns would bind the collector's Role to the namespace's \"default\" ServiceAccount, and so to every pod that uses it: set collector.serviceAccount.create=true or name a dedicated collector.serviceAccount.name" -}}
{{- end -}}
{{- with $c.trigger.peakWindow -}}
{{- $ends := splitList "-" . -}}
{{- if eq (first $ends) (replace "24:00" "00:00" (last $ends)) -}}
{{- fail (printf "collector.trigger.peakWindow %q: start and end are equal (leave it empty for no window)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
