# warmkv on Cloud Run with one NVIDIA L4 per instance.
#
# Sessions' KV caches live in instance memory. A Cloud Storage bucket is mounted at SNAPSHOT_DIR:
# on SIGTERM (scale-in, new revision, scale to zero) the server writes its sessions there, and a
# later instance restores a session by id when its next request arrives.

locals {
  snapshot_dir  = "/var/lib/warmkv/snapshots"
  api_keys_dir  = "/etc/warmkv/api-keys"
  api_keys_file = "keys"
}

resource "google_service_account" "warmkv" {
  account_id   = "${var.service_name}-run"
  display_name = "warmkv Cloud Run service"
}

resource "google_storage_bucket" "snapshots" {
  name                        = "${var.project_id}-${var.service_name}-snapshots"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # A session nobody resumed in two weeks is not worth keeping.
  lifecycle_rule {
    condition {
      age = 14
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_iam_member" "snapshots_rw" {
  bucket = google_storage_bucket.snapshots.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.warmkv.email}"
}

# warmkv's API keys, one per line (docs/security.md). Terraform creates the secret, never its
# value, so no key lands in the Terraform state: add the keys as a version before the service
# starts (docs/deploy.md, "Cloud Run"):
#   gcloud secrets versions add warmkv-api-keys --data-file=api-keys.txt
resource "google_secret_manager_secret" "api_keys" {
  secret_id = "${var.service_name}-api-keys"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "api_keys_read" {
  secret_id = google_secret_manager_secret.api_keys.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.warmkv.email}"
}

# Optional (var.session_store): sessions in Memorystore for Redis, shared by every instance. AUTH is
# on; transit encryption is off because the server does not take Memorystore's CA yet, and the
# traffic stays in the VPC (Direct VPC egress, private ranges only). The instance's URL with its AUTH
# string goes into the secret var.session_store_url_secret by hand (docs/deploy.md), never into
# this state.
resource "google_redis_instance" "sessions" {
  count                   = var.session_store ? 1 : 0
  name                    = "${var.service_name}-sessions"
  region                  = var.region
  tier                    = "STANDARD_HA"
  memory_size_gb          = var.session_store_memory_gb
  redis_version           = "REDIS_7_2"
  authorized_network      = "projects/${var.project_id}/global/networks/${var.network}"
  auth_enabled            = true
  transit_encryption_mode = "DISABLED"
  # Sessions must outlive a failover of the primary: the replica takes over with the data.
  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = "ONE_HOUR"
  }
}

resource "google_secret_manager_secret_iam_member" "session_store_url_read" {
  count     = var.session_store ? 1 : 0
  project   = var.project_id
  secret_id = var.session_store_url_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.warmkv.email}"
}

resource "google_cloud_run_v2_service" "warmkv" {
  name                = var.service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account       = google_service_account.warmkv.email
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

    # A streamed completion is one request for its whole length; 3600 s is Cloud Run's maximum.
    timeout = "3600s"

    # Cookie-based and best effort: clients that keep cookies return to the same instance; a miss
    # costs a prefill (or a restore from the bucket), not a wrong answer.
    session_affinity = true

    max_instance_request_concurrency = var.concurrency

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    # Direct VPC egress to Memorystore, only with the session store.
    dynamic "vpc_access" {
      for_each = var.session_store ? [1] : []
      content {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = var.network
          subnetwork = var.subnetwork
        }
      }
    }

    node_selector {
      accelerator = var.gpu_type
    }
    # Cheaper GPU seconds and the quota new projects get; an instance lost with its zone is
    # restored from the snapshots anyway.
    gpu_zonal_redundancy_disabled = true

    volumes {
      name = "snapshots"
      gcs {
        bucket    = google_storage_bucket.snapshots.name
        read_only = false
        # Files owned by the image's non-root user (uid/gid 10001).
        mount_options = ["uid=10001", "gid=10001"]
      }
    }

    # The latest version of the keys secret, as the file API_KEYS_FILE. Cloud Run fetches the value
    # when the file is read; the server reads it at start, so instances started after a new version
    # (a new revision, a scale-out) serve the new keys.
    volumes {
      name = "api-keys"
      secret {
        secret = google_secret_manager_secret.api_keys.secret_id
        items {
          version = "latest"
          path    = local.api_keys_file
        }
      }
    }

    containers {
      image = var.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu              = var.cpu
          memory           = var.memory
          "nvidia.com/gpu" = "1"
        }
        # GPU services require CPU always allocated (instance-based billing); it also keeps the
        # batching loop and the int8 demotion of idle sessions running between requests.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      env {
        name  = "EXECUTION_PROVIDER"
        value = "cuda"
      }
      env {
        # The image's CUDA 12 provider runs on the L4's R535 driver (CUDA 12.2) through CUDA
        # minor-version compatibility. Should the GPU ever be missing, log it and serve from the
        # CPU rather than crash-looping (docs/deploy.md, "Cloud Run").
        name  = "EXECUTION_PROVIDER_FALLBACK"
        value = "true"
      }
      env {
        name  = "KV_CACHE_BYTES"
        value = var.kv_cache_bytes
      }
      env {
        name  = "SNAPSHOT_DIR"
        value = local.snapshot_dir
      }
      env {
        name  = "DRAIN_SECONDS"
        value = tostring(var.drain_seconds)
      }
      env {
        # Idle sessions move to int8 after 5 minutes: half the memory and half the bytes to write
        # in the 10 s between SIGTERM and SIGKILL.
        name  = "INT8_AFTER_SECONDS"
        value = "300"
      }

      env {
        name  = "API_KEYS_FILE"
        value = "${local.api_keys_dir}/${local.api_keys_file}"
      }

      # The session store's URL (it holds the AUTH string) from Secret Manager, only with the store.
      dynamic "env" {
        for_each = var.session_store ? [1] : []
        content {
          name = "SESSION_STORE_URL"
          value_source {
            secret_key_ref {
              secret  = var.session_store_url_secret
              version = "latest"
            }
          }
        }
      }

      volume_mounts {
        name       = "snapshots"
        mount_path = local.snapshot_dir
      }
      volume_mounts {
        name       = "api-keys"
        mount_path = local.api_keys_dir
      }

      # Cloud Run sends traffic only after this passes: /readyz is 503 until the model is loaded.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 5
        timeout_seconds       = 3
        failure_threshold     = 48
        http_get {
          path = "/readyz"
          port = 8080
        }
      }

      liveness_probe {
        period_seconds    = 15
        timeout_seconds   = 3
        failure_threshold = 3
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  depends_on = [google_storage_bucket_iam_member.snapshots_rw, google_secret_manager_secret_iam_member.api_keys_read, google_secret_manager_secret_iam_member.session_store_url_read]
}

resource "google_cloud_run_v2_service_iam_member" "public" {
  count    = var.allow_unauthenticated ? 1 : 0
  name     = google_cloud_run_v2_service.warmkv.name
  location = google_cloud_run_v2_service.warmkv.location
  role     = "roles/run.invoker"
  member   = "allUsers"
}
