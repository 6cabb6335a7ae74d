"""The parts of the Graph SDK (msgraph-sdk, kiota) the directory uses, imported once.

Some generated request-builder modules call ``warnings.warn(DeprecationWarning)``
in their class bodies at import time; importing them here, inside one
``catch_warnings``, keeps that noise out of host applications that run with
warnings as errors. Import SDK names from here, never directly.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kiota_abstractions.default_query_parameters  # noqa: F401
    import msgraph.generated.groups.delta.delta_request_builder
    import msgraph.generated.groups.item.group_item_request_builder
    import msgraph.generated.groups.item.transitive_members.graph_user.count.count_request_builder
    import msgraph.generated.groups.item.transitive_members.transitive_members_request_builder
    import msgraph.generated.users.delta.delta_request_builder
    import msgraph.generated.users.users_request_builder  # noqa: F401
    from azure.core.exceptions import AzureError, ClientAuthenticationError
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from kiota_abstractions.method import Method
    from kiota_abstractions.native_response_handler import NativeResponseHandler
    from kiota_abstractions.request_information import RequestInformation
    from kiota_abstractions.request_option import RequestOption
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.middleware.options import ResponseHandlerOption
    from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
    from msgraph.generated.groups.item.group_item_request_builder import GroupItemRequestBuilder
    from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
        GraphUserRequestBuilder,
    )
    from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_request_adapter import options as _graph_adapter_options
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory

NATIVE = NativeResponseHandler()
"""Hands back the raw ``httpx.Response``: pages are parsed with ``json.loads``, not the SDK's models."""

__all__ = [
    "AzureError",
    "AzureIdentityAuthenticationProvider",
    "ClientAuthenticationError",
    "GraphClientFactory",
    "GraphRequestAdapter",
    "GraphServiceClient",
    "GraphUserRequestBuilder",
    "GroupItemRequestBuilder",
    "GroupsRequestBuilder",
    "Method",
    "NATIVE",
    "NativeResponseHandler",
    "RequestConfiguration",
    "RequestInformation",
    "RequestOption",
    "ResponseHandlerOption",
    "UserItemRequestBuilder",
    "_graph_adapter_options",
]
