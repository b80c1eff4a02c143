"""Screens of the console; each module holds one screen (or a family of small dialogs)."""
