"""dovecot-appauth: app passwords and login auditing for Dovecot's checkpassword passdb."""

__version__ = "0.1.0"
# True in the per-login program (entry.checkpassword), which exits after its one login:
# audit/sources/maxmind.py then imports maxminddb's reader modules without the package's
# __init__ (an import cost no other process needs to save)
per_login_process = False
