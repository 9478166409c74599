"""The UCloud-compatible Action API (issue 17; docs/ucloud-api.md).

`POST /ucloud`, form-encoded or JSON, routed on `Action`, signed as UCloud signs, answered
with HTTP 200 and `{"Action": "<Action>Response", "RetCode": …, "Message": …}`. Each
action is a translation onto Yunhan's own API, called in-process on behalf of the key's
project: the same store, the same validation, the same audit trail.
"""
