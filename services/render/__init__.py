"""Renderings of a pipeline spec as plain data: dashboards, alert rules, compose files."""
