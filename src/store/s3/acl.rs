//! Object ACLs on S3-compatible stores: grants are sent as an
//! `AccessControlPolicy` body, or as `x-amz-grant-*` headers where a store
//! takes only those; which one works is learned once per bucket. A refusal
//! that means "this bucket takes no ACLs" is told apart from other errors.

use super::*;

pub(super) const GRANTS_UNKNOWN: u8 = 0;

pub(super) const GRANTS_AS_BODY: u8 = 1;

pub(super) const GRANTS_AS_HEADERS: u8 = 2;

impl S3Store {
    pub(super) fn acl_request(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> aws_sdk_s3::operation::put_object_acl::builders::PutObjectAclFluentBuilder {
        self.client
            .put_object_acl()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
    }

    pub(super) async fn grants_took(
        &self,
        key: &str,
        version_id: Option<&str>,
        want: &Acl,
    ) -> Result<bool, StoreError> {
        Ok(self.get_acl(key, version_id).await?.normalized() == want.normalized())
    }

    pub(super) async fn put_grants_body(
        &self,
        key: &str,
        version_id: Option<&str>,
        acl: &Acl,
    ) -> Result<(), StoreError> {
        let grants = acl
            .grants
            .iter()
            .filter_map(|(who, p)| {
                let g = match who {
                    Grantee::User(id) => SdkGrantee::builder()
                        .r#type(GranteeType::CanonicalUser)
                        .id(id),
                    Grantee::Group(uri) => {
                        SdkGrantee::builder().r#type(GranteeType::Group).uri(uri)
                    }
                    Grantee::Email(e) => SdkGrantee::builder()
                        .r#type(GranteeType::AmazonCustomerByEmail)
                        .email_address(e),
                };
                Some(
                    Grant::builder()
                        .grantee(g.build().ok()?)
                        .permission(Permission::from(p.as_str()))
                        .build(),
                )
            })
            .collect();
        let policy = AccessControlPolicy::builder()
            .owner(Owner::builder().id(&acl.owner).build())
            .set_grants(Some(grants))
            .build();
        self.acl_request(key, version_id)
            .access_control_policy(policy)
            .send()
            .await
            .map_err(|e| self.acl_err(Some(key), e))?;
        Ok(())
    }

    pub(super) async fn put_grants_headers(
        &self,
        key: &str,
        version_id: Option<&str>,
        acl: &Acl,
    ) -> Result<(), StoreError> {
        let mut by_permission: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (who, p) in &acl.grants {
            let g = match who {
                Grantee::User(id) => format!("id=\"{id}\""),
                Grantee::Group(uri) => format!("uri=\"{uri}\""),
                Grantee::Email(e) => format!("emailAddress=\"{e}\""),
            };
            by_permission.entry(p.as_str()).or_default().push(g);
        }
        let header = |p: &str| by_permission.get(p).map(|v| v.join(", "));
        self.acl_request(key, version_id)
            .set_grant_full_control(header("FULL_CONTROL"))
            .set_grant_read(header("READ"))
            .set_grant_write(header("WRITE"))
            .set_grant_read_acp(header("READ_ACP"))
            .set_grant_write_acp(header("WRITE_ACP"))
            .send()
            .await
            .map_err(|e| self.acl_err(Some(key), e))?;
        Ok(())
    }

    /// As [`S3Store::err`], but a store that does not implement the ACL call
    /// at all says the same as one with ACLs disabled.
    pub(super) fn acl_err<E>(
        &self,
        key: Option<&str>,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match classify(&self.describe, key, e) {
            StoreError::Server {
                bucket,
                status: 501,
                code,
                message,
            }
            | StoreError::Rejected {
                bucket,
                status: 405 | 501,
                code,
                message,
            } => StoreError::AclNotSupported {
                bucket,
                code,
                message,
            },
            other => other,
        }
    }
}
