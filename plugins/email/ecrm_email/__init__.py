"""ecrm-email: the e-mail channel of ecrm (see ``docs/plugins/email.md``)."""

__version__ = "0.1.0"
