"""Demonstrations and behaviour cloning of the small Meta-World reference policy."""
