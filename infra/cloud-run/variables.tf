variable "project_id" {
  description = "Google Cloud project that runs the service."
  type        = string
}

variable "region" {
  description = "A region with Cloud Run L4 GPUs, e.g. us-central1, europe-west1, europe-west4, asia-southeast1, us-east4."
  type        = string
  default     = "us-central1"
}

variable "service_name" {
  description = "Name of the Cloud Run service (also prefixes the bucket and the service account)."
  type        = string
  default     = "warmkv"
}

variable "image" {
  description = "Container image, e.g. us-central1-docker.pkg.dev/PROJECT/warmkv/warmkv:cuda (the Dockerfile's default target)."
  type        = string
}

variable "gpu_type" {
  description = "Cloud Run accelerator. nvidia-l4 has driver R535 (CUDA 12.2), which runs the image's CUDA 12 provider (docs/deploy.md). nvidia-rtx-pro-6000 (R580) runs it too and needs at least 20 CPU and 80 GiB."
  type        = string
  default     = "nvidia-l4"
}

variable "cpu" {
  description = "vCPUs per instance (Cloud Run's minimum with an L4 is 4)."
  type        = string
  default     = "8"
}

variable "memory" {
  description = "Memory per instance (Cloud Run's minimum with an L4 is 16Gi). The in-memory KV caches live here."
  type        = string
  default     = "32Gi"
}

variable "kv_cache_bytes" {
  description = "KV_CACHE_BYTES: the budget of all in-memory session caches; keep it well under var.memory (model, activations and the Node heap need the rest)."
  type        = string
  default     = "16GiB"
}

variable "min_instances" {
  description = "0 lets the service scale to zero (sessions then survive only as snapshots in the bucket); 1 keeps one warm instance, billed all the time."
  type        = number
  default     = 0
}

variable "max_instances" {
  description = "Upper bound of instances, and of L4s in use; needs as much Cloud Run GPU quota in the region."
  type        = number
  default     = 3
}

variable "concurrency" {
  description = "Requests (open streams included) one instance takes before Cloud Run starts another; matches MAX_BATCH_SIZE by default."
  type        = number
  default     = 32
}

variable "drain_seconds" {
  description = "DRAIN_SECONDS. Cloud Run kills an instance 10 s after SIGTERM, and the snapshots are written after the drain: keep this small."
  type        = number
  default     = 4

  validation {
    condition     = var.drain_seconds >= 0 && var.drain_seconds < 10
    error_message = "Cloud Run sends SIGKILL 10 s after SIGTERM; DRAIN_SECONDS must leave time for the snapshots."
  }
}

variable "allow_unauthenticated" {
  description = "Grant roles/run.invoker to allUsers. Keep false and use API keys / IAM unless the endpoint is meant to be public."
  type        = bool
  default     = false
}

variable "session_store" {
  description = "true: a Memorystore for Redis instance holds the sessions (SESSION_STORE_URL, README \"Fleet\"), so any instance serves any turn; the instances reach it over Direct VPC egress on var.network. false: sessions live in each instance (affinity, snapshots in the bucket)."
  type        = bool
  default     = false
}

variable "session_store_url_secret" {
  description = "With session_store: the Secret Manager secret (created and filled outside Terraform, so the AUTH string stays out of its state) whose latest version is redis://:AUTH@HOST:PORT of the instance (docs/deploy.md)."
  type        = string
  default     = "warmkv-session-store-url"
}

variable "session_store_memory_gb" {
  description = "Memorystore capacity. Transcripts are small (4 bytes a token): 1 GB holds about 250 million tokens of history."
  type        = number
  default     = 1
}

variable "network" {
  description = "With session_store: the VPC network (and its subnetwork in var.region) the instances and Memorystore share."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "With session_store: the subnetwork in var.region that Cloud Run's Direct VPC egress takes addresses from."
  type        = string
  default     = "default"
}
