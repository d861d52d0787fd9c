output "url" {
  description = "HTTPS address of the service (OpenAI API under /v1)."
  value       = google_cloud_run_v2_service.warmkv.uri
}

output "snapshot_bucket" {
  description = "Bucket mounted at SNAPSHOT_DIR."
  value       = google_storage_bucket.snapshots.name
}

output "service_account" {
  description = "Identity the instances run as."
  value       = google_service_account.warmkv.email
}

output "api_keys_secret" {
  description = "Secret Manager secret whose latest version holds the API keys (one per line)."
  value       = google_secret_manager_secret.api_keys.secret_id
}

output "session_store_host" {
  description = "With session_store: host:port of the Memorystore instance, for the URL in var.session_store_url_secret."
  value       = var.session_store ? "${google_redis_instance.sessions[0].host}:${google_redis_instance.sessions[0].port}" : null
}
