"""A hand-written Snowball: moto has no Snowball backend, so localaws implements the job API, the device's
S3 endpoint and the import into S3 itself, against botocore's ``snowball`` service model."""
