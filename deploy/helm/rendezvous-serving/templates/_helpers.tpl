{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "rdv.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; every object name starts with it. */}}
{{- define "rdv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rdv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rdv.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels: `rdv.selectorLabels` takes a dict {root, component, model}; the selector of a
workload is exactly these, so two components never select each other's pods. */}}
{{- define "rdv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rdv.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
rendezvous-serving/model: {{ . }}
{{- end }}
{{- end -}}

{{- define "rdv.labels" -}}
{{ include "rdv.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: rendezvous-serving
{{- end -}}

{{/* Image: a dict {root, image} where image may override repository/tag/pullPolicy. */}}
{{- define "rdv.image" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (.image | default dict) -}}
image: {{ printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) | quote }}
imagePullPolicy: {{ $img.pullPolicy }}
{{- end -}}

{{/* Kafka -------------------------------------------------------------------------------- */}}

{{/* "yes" for a librdkafka key naming the brokers: they are kafka.bootstrap, and the services refuse
them in RDV_KAFKA_CONFIG (services/core/kafka_config.py). */}}
{{- define "rdv.isBrokersKey" -}}
{{- if has . (list "bootstrap.servers" "metadata.broker.list") }}yes{{ end -}}
{{- end -}}

{{/* A librdkafka key whose value must come from a Secret: those the services know to hold a
secret or an identity (SECRET in services/core/kafka_config.py, but for the user name and the
paths of files), and any key holding a secret-like word. */}}
{{- define "rdv.isSecretKey" -}}
{{- $key := lower . -}}
{{- if has $key (list "sasl.jaas.config" "sasl.kerberos.kinit.cmd" "sasl.kerberos.principal"
    "sasl.oauthbearer.assertion.private.key.passphrase" "sasl.oauthbearer.client.id"
    "sasl.oauthbearer.client.secret" "sasl.oauthbearer.config" "sasl.oauthbearer.extensions"
    "sasl.oauthbearer.scope" "sasl.oauthbearer.token.endpoint.url" "sasl.password" "ssl.ca.pem"
    "ssl.certificate.pem" "ssl.key.password" "ssl.key.pem" "ssl.keystore.password") }}yes{{ end -}}
{{- range list "password" "secret" "token" "key.pem" "private" "sasl.jaas" -}}
{{- if contains . $key }}yes{{ end -}}
{{- end -}}
{{- end -}}

{{/* The variable holding one secretConfig entry, e.g. sasl.password -> KAFKA_SECRET_SASL_PASSWORD. */}}
{{- define "rdv.secretEnvName" -}}
{{- printf "KAFKA_SECRET_%s" (regexReplaceAll "[^A-Za-z0-9]" . "_" | upper) -}}
{{- end -}}

{{/* RDV_KAFKA_CONFIG: plain settings as written, secret ones as $(VAR) references that the
kubelet expands from the secretKeyRef variables defined before it, so no secret value is
ever part of a rendered manifest. Takes (dict "config" ... "secrets" ... "where" ...). */}}
{{- define "rdv.kafkaConfigValue" -}}
{{- $pairs := list -}}
{{- $where := .where -}}
{{- range $key, $value := .config -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (include "rdv.scalar" $value)) -}}
{{- end -}}
{{- range .secrets -}}
{{- if hasKey $.config .key -}}
{{- fail (printf "%s is in both the config and the secretConfig of %s" .key $where) -}}
{{- end -}}
{{- if include "rdv.isBrokersKey" .key -}}
{{- fail (printf "%s in the secretConfig of %s: the brokers are kafka.bootstrap (the services refuse it)" .key $where) -}}
{{- end -}}
{{- $pairs = append $pairs (printf "%s=$(%s)" .key (include "rdv.secretEnvName" .key)) -}}
{{- end -}}
{{- join ";" $pairs -}}
{{- end -}}

{{/* Environment of every Kafka client: bootstrap, topics, librdkafka settings, metrics port.
Takes (dict "root" $ "component" NAME): kafka.principals.NAME's config and secretConfig are
merged over kafka.config and kafka.secretConfig for that component's pods only, so that each
runs as its own principal (docs/security.md: one SASL principal per role). */}}
{{- define "rdv.checkKafkaConfig" -}}
{{- $where := .where -}}
{{- range $key, $value := .config -}}
{{- if include "rdv.isSecretKey" $key -}}
{{- fail (printf "%s.config.%s looks secret: give it in %s.secretConfig (from an existing Secret), never inline" $where $key $where) -}}
{{- end -}}
{{- if contains ";" (toString $value) -}}
{{- fail (printf "%s.config.%s contains ';', the separator of RDV_KAFKA_CONFIG" $where $key) -}}
{{- end -}}
{{- if include "rdv.isBrokersKey" $key -}}
{{- fail (printf "%s.config.%s: the brokers are kafka.bootstrap, not a config entry (the services refuse it)" $where $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rdv.kafkaEnv" -}}
{{- $root := .root -}}
{{- $own := get ($root.Values.kafka.principals | default dict) .component | default dict -}}
{{- include "rdv.checkKafkaConfig" (dict "config" $root.Values.kafka.config "where" "kafka") -}}
{{- include "rdv.checkKafkaConfig" (dict "config" ($own.config | default dict) "where" (printf "kafka.principals.%s" .component)) -}}
{{- $config := mergeOverwrite (deepCopy ($root.Values.kafka.config | default dict)) (deepCopy ($own.config | default dict)) -}}
{{- $ownKeys := list -}}
{{- range ($own.secretConfig | default list) }}{{ $ownKeys = append $ownKeys .key }}{{ end -}}
{{- $secrets := list -}}
{{- range ($root.Values.kafka.secretConfig | default list) }}{{ if not (has .key $ownKeys) }}{{ $secrets = append $secrets . }}{{ end }}{{ end -}}
{{- $secrets = concat $secrets ($own.secretConfig | default list) -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrap is required" $root.Values.kafka.bootstrap | quote }}
- name: RDV_TOPIC_PREFIX
  value: {{ $root.Values.kafka.topicPrefix | quote }}
{{- with $root.Values.kafka.topics }}
- name: RDV_TOPIC
  value: {{ include "rdv.topicOverrides" $root | quote }}
{{- end }}
- name: RDV_CONNECT_TIMEOUT_S
  value: {{ include "rdv.scalar" $root.Values.kafka.connectTimeoutS | quote }}
{{- range $secrets }}
- name: {{ include "rdv.secretEnvName" .key }}
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.secretConfig[].secretName is required" .secretName }}
      key: {{ required "kafka.secretConfig[].secretKey is required" .secretKey }}
{{- end }}
{{- $value := include "rdv.kafkaConfigValue" (dict "config" $config "secrets" $secrets "where" (printf "kafka.principals.%s merged over kafka" .component)) }}
{{- if $value }}
- name: RDV_KAFKA_CONFIG
  value: {{ $value | quote }}
{{- end }}
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end -}}

{{- define "rdv.topicOverrides" -}}
{{- $pairs := list -}}
{{- range $role, $name := .Values.kafka.topics -}}
{{- if not (has $role (list "requests" "scores" "answers" "log" "control" "deadletter" "replies" "models")) -}}
{{- fail (printf "kafka.topics: unknown role %q" $role) -}}
{{- end -}}
{{- $pairs = append $pairs (printf "%s=%s" $role $name) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The topic name of a role, honouring kafka.topics overrides. */}}
{{- define "rdv.topic" -}}
{{- $role := index . 1 -}}
{{- $root := index . 0 -}}
{{- default (printf "%s%s" $root.Values.kafka.topicPrefix $role) (index $root.Values.kafka.topics $role) -}}
{{- end -}}

{{- define "rdv.metricsEnv" -}}
- name: RDV_METRICS_PORT
  value: {{ include "rdv.scalar" .Values.metricsPort | quote }}
{{- /* Not only the project's image sets it: a model's own image must be probed too. */}}
- name: RDV_METRICS_HOST
  value: "0.0.0.0"
{{- end -}}

{{/* The name of a model's workload and Service (.root, .model): at most 63 characters, as a
Service name must be. */}}
{{- define "rdv.modelName" -}}
{{- printf "%s-model-%s" (include "rdv.fullname" .root) .model.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A value as its text: a whole number as digits (YAML numbers reach templates as floats,
which %v prints as 1e+06: librdkafka would read message.max.bytes=1). */}}
{{- define "rdv.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- printf "%v" . -}}
{{- end -}}
{{- end -}}

{{/* Pod pieces ---------------------------------------------------------------------------- */}}

{{- define "rdv.probes" -}}
{{- include "rdv.probesWith" (dict "root" . "liveness" .Values.probes.liveness) }}
{{- end -}}

{{- define "rdv.probesWith" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* A model worker's probes. A model holding the interpreter lock leaves /healthz unanswered; the
worker's own bound for a batch (models x predictTimeoutS + 60 s, its /healthz "stalled" after
that) is let run, and two periods more, before a restart, so the rescue process (timeout + at most 10 s) acts first:
restarted sooner, the worker re-read the batch and hung again. predictTimeoutS 0 (no limit): the
probes as given. */}}
{{- define "rdv.modelProbes" -}}
{{- $liveness := deepCopy .root.Values.probes.liveness -}}
{{- $timeout := float64 .timeout -}}
{{- if gt $timeout 0.0 -}}
{{- $period := float64 ($liveness.periodSeconds | default 10) -}}
{{- $needed := add (int (ceil (divf (addf (mulf $timeout .models) 60) $period))) 2 -}}
{{- $_ := set $liveness "failureThreshold" (max (int $liveness.failureThreshold) $needed) -}}
{{- end -}}
{{- include "rdv.probesWith" (dict "root" .root "liveness" $liveness) }}
{{- end -}}

{{- define "rdv.metricsPort" -}}
- name: metrics
  containerPort: {{ .Values.metricsPort }}
  protocol: TCP
{{- end -}}

{{/* Volumes every pod has: /tmp (the root file system is read-only) and the Kafka TLS files. */}}
{{- define "rdv.baseVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with .Values.kafka.tlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
    defaultMode: {{ $.Values.secretFileMode }}
{{- end }}
{{- end -}}

{{- define "rdv.baseVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tlsSecret }}
- name: kafka-tls
  mountPath: /etc/rdv/kafka
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload: a dict {root, pod, hook} where pod may set
podAnnotations, nodeSelector, tolerations, affinity; hook: a Helm hook's pod (the topics Job). */}}
{{- define "rdv.podSpecCommon" -}}
{{- $v := .root.Values -}}
{{- if not .hook -}}
serviceAccountName: {{ include "rdv.serviceAccountName" .root }}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
{{- else -}}
{{- /* A hook runs before the release's objects exist: the chart's service account is not there
yet, an existing one the values name is (or the namespace's default); it never needs a token. */ -}}
{{- if and (not $v.serviceAccount.create) $v.serviceAccount.name -}}
serviceAccountName: {{ $v.serviceAccount.name }}
{{ end -}}
automountServiceAccountToken: false
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.pod.nodeSelector | default $v.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.pod.tolerations | default $v.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.pod.affinity | default $v.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "rdv.podAnnotations" -}}
{{- $annotations := mergeOverwrite (deepCopy (.root.Values.podAnnotations | default dict)) (.pod.podAnnotations | default dict) -}}
{{- with $annotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* A map as "key=value,key=value" (sorted by key), the form of repeatable key=value flags. */}}
{{- define "rdv.pairs" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (include "rdv.scalar" $value)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The consumer group of a model's worker: <prefix>model.<name>, or with co-hosted models
<prefix>model.<name>+<co-hosted name>+... (the worker's own default, services/model_worker/settings.py). */}}
{{- define "rdv.modelGroup" -}}
{{- $names := list .model.name -}}
{{- range .model.coHost }}{{- $names = append $names .name }}{{- end -}}
{{- printf "%smodel.%s" .root.Values.kafka.topicPrefix (join "+" $names) -}}
{{- end }}

{{/* --co-host from a model's coHost list: NAME=SPEC,... */}}
{{- define "rdv.coHost" -}}
{{- $pairs := list -}}
{{- range . }}{{- $pairs = append $pairs (printf "%s=%s" .name .spec) }}{{- end -}}
{{- join "," $pairs -}}
{{- end }}
