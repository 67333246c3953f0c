//! Bucket setup for quick starts, the probe and tests: creating a versioned
//! bucket, switching versioning, Object Ownership. Never called by a mount.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{BucketVersioningStatus, ObjectOwnership, VersioningConfiguration};

use super::S3Store;
use crate::error::StoreError;

impl S3Store {
    /// Creates the bucket if missing and enables versioning: for quick starts and
    /// tests, never called by the mount.
    pub async fn create_versioned_bucket(&self) -> Result<(), StoreError> {
        // Outside us-east-1, S3 wants the region named in the request body.
        let location = (self.region != "us-east-1").then(|| {
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    self.region.as_str(),
                ))
                .build()
        });
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .set_create_bucket_configuration(location)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) => {}
            Err(e) => return Err(self.err(None, e)),
        }
        self.set_versioning(true).await
    }

    /// Turns versioning on (Enabled) or off (Suspended).
    pub async fn set_versioning(&self, enabled: bool) -> Result<(), StoreError> {
        let status = if enabled {
            BucketVersioningStatus::Enabled
        } else {
            BucketVersioningStatus::Suspended
        };
        self.client
            .put_bucket_versioning()
            .bucket(&self.bucket)
            .versioning_configuration(VersioningConfiguration::builder().status(status).build())
            .send()
            .await
            .map_err(|e| self.err(None, e))?;
        Ok(())
    }

    /// Sets the bucket's Object Ownership (`ObjectWriter`, `BucketOwnerPreferred`
    /// or `BucketOwnerEnforced`, which turns ACLs off). For setup and tests.
    pub async fn set_object_ownership(&self, ownership: &str) -> Result<(), StoreError> {
        let invalid = |e: aws_sdk_s3::error::BuildError| StoreError::Rejected {
            bucket: self.describe.clone(),
            status: 0,
            code: "InvalidOwnership".into(),
            message: e.to_string(),
        };
        let rule = aws_sdk_s3::types::OwnershipControlsRule::builder()
            .object_ownership(ObjectOwnership::from(ownership))
            .build()
            .map_err(invalid)?;
        let controls = aws_sdk_s3::types::OwnershipControls::builder()
            .rules(rule)
            .build()
            .map_err(invalid)?;
        self.client
            .put_bucket_ownership_controls()
            .bucket(&self.bucket)
            .ownership_controls(controls)
            .send()
            .await
            .map_err(|e| self.err(None, e))?;
        Ok(())
    }
}
