"""Autonomy: cron schedules, zero-cost wake checks, signed webhooks, steerable lanes.

`legion.automation.scheduler.Automation` is what the host owns; docs/automation.md is
the operator's page.
"""
