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
