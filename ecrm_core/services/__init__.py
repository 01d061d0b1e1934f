"""The parts of the :class:`~ecrm_core.CRM` facade (``crm.customers``…)."""
