"""Admin pages for other first-party plugins, registered through the core's
``ecrm_register_admin_pages`` hook exactly as a third-party plugin would."""
