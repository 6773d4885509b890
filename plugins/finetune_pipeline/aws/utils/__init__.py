"""Helpers shared by the AWS layer's operators and sensors."""
