"""IAM and KMS in a moto server, for tests/credentials.rs and tests/encryption.rs.

  moto_iam.py setup ENDPOINT BUCKET...  -> JSON {access_key, secret_key, role_arn}
      (5 unauthenticated IAM calls, then the buckets are created and versioned
      with the role's credentials: start moto with INITIAL_NO_AUTH_ACTION_COUNT=5)
  moto_iam.py assume ENDPOINT ACCESS SECRET ROLE_ARN  -> the role's temporary
      credentials, as a container credentials endpoint serves them
  moto_iam.py kms-key ENDPOINT          -> the id of a new KMS key
  moto_iam.py head ENDPOINT BUCKET KEY  -> JSON {sse, kms_key_id} of the key's object
"""
import json
import sys
from datetime import timezone

import boto3


def client(service, endpoint, **creds):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=creds.get("access", "setup"),
                        aws_secret_access_key=creds.get("secret", "setup"),
                        aws_session_token=creds.get("token"))


def assume(endpoint, access, secret, role_arn):
    sts = client("sts", endpoint, access=access, secret=secret)
    return sts.assume_role(RoleArn=role_arn, RoleSessionName="regionfs-test")["Credentials"]


def as_role(endpoint, access, secret, role_arn):
    c = assume(endpoint, access, secret, role_arn)
    return client("s3", endpoint, access=c["AccessKeyId"], secret=c["SecretAccessKey"],
                  token=c["SessionToken"])


def policy(action):
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]})


def main():
    cmd, endpoint = sys.argv[1:3]
    if cmd == "setup":
        iam = client("iam", endpoint)
        iam.create_user(UserName="backup-host")
        key = iam.create_access_key(UserName="backup-host")["AccessKey"]
        iam.put_user_policy(UserName="backup-host", PolicyName="assume", PolicyDocument=policy("sts:AssumeRole"))
        trust = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="regionfs-writer", AssumeRolePolicyDocument=trust)["Role"]
        iam.put_role_policy(RoleName="regionfs-writer", PolicyName="s3", PolicyDocument=policy("s3:*"))
        s3 = as_role(endpoint, key["AccessKeyId"], key["SecretAccessKey"], role["Arn"])
        for bucket in sys.argv[3:]:
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        print(json.dumps({"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"],
                          "role_arn": role["Arn"]}))
    elif cmd == "assume":
        c = assume(endpoint, *sys.argv[3:6])
        print(json.dumps({"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                          "Token": c["SessionToken"],
                          "Expiration": c["Expiration"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    elif cmd == "kms-key":
        print(client("kms", endpoint).create_key()["KeyMetadata"]["KeyId"])
    elif cmd == "head":
        h = client("s3", endpoint).head_object(Bucket=sys.argv[3], Key=sys.argv[4])
        print(json.dumps({"sse": h.get("ServerSideEncryption"), "kms_key_id": h.get("SSEKMSKeyId")}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
