"""Operator reports."""
