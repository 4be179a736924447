"""Slash-command cogs, one module per command family; bot.py loads every module here."""
