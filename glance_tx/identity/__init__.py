"""
Who is asking: one asynchronous L{IIdentityResolver} that the API asks for
every request's L{glance_tx.context.RequestContext}, with a provider per
C{auth_strategy} (see L{glance_tx.identity.interface}).
"""
