terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # gpu_zonal_redundancy_disabled and the GA node_selector of google_cloud_run_v2_service
      # arrived in the 6.x series (terraform-provider-google CHANGELOG, "cloudrunv2: added
      # `gpu_zonal_redundancy_disabled`"); session_affinity and GCS volumes are older.
      version = ">= 6.35, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
