"""Cron schedules: the platform submits a workflow's runs at the times a cron expression
names (models, timing: the cron arithmetic, manage: the use cases, firing: the periodic
tick, tokens: the token a schedule acts with, and its revocation)."""
