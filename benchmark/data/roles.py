"""Roles of a dataset's fields, so that model configs name roles instead of one dataset's column names.

A dataset block declares ``roles: {user: <column>, item: <column>, author: <column>, ...}``; the role ``domain``
is always its ``domain_field``. A model key that names fields (every key ending in ``_fields``, e.g. Crocodile's
``prior_fields`` or PEPNet's ``ppnet_prior_fields``) may list roles, resolved per dataset while the config is
resolved, so models receive plain field names:

* ``user`` - the field the dataset declares for that role (an error naming the fix where it declares none);
* ``(author)`` - in parentheses: that field where the dataset declares the role (or has a field of that name),
  else left out (an optional prior);
* any other entry - a field name, as before (an explicit list still works).

A role wins over a field of the same name. ``roles`` itself is consumed by the resolution: a resolved config holds
field names only, so a config written with field names resolves (and hashes) exactly as it did.

Defaults the roles give a dataset block (:func:`dataset_defaults`): gAUC's ``group_id``, where the block names
none, is a meta copy of the user field (``group_id``, ``preprocess: copy_from(<user field>)``), the grouping FuxiCTR's
gAUC needs (grouping on the categorical id itself would merge every unseen user into one group). Domain labels:
``domain_names`` (a list, one name per domain, or a text with ``{}`` for the value, e.g. ``S{}``); by default a
domain is labelled by its value itself.
"""
from __future__ import annotations

from mdl_bench.kernel.errors import UserError, close_matches, show_value

ROLES_KEY = "roles"
DOMAIN_ROLE = "domain"
GROUP_COLUMN = "group_id"


def field_keys(params: dict) -> list[str]:
    """The keys of ``params`` that name fields: every ``*_fields`` key holding a list of names."""
    return [k for k, v in params.items() if k.endswith("_fields") and isinstance(v, (list, tuple))
            and all(isinstance(x, str) for x in v)]


def feature_names(params: dict, meta: bool = False) -> list[str]:
    """Names of the active columns of ``feature_cols`` (meta columns only with ``meta``), in order."""
    out = []
    for block in params.get("feature_cols") or []:
        if not isinstance(block, dict) or "name" not in block or block.get("active", True) is False:
            continue
        if block.get("type") == "meta" and not meta:
            continue
        names = block["name"] if isinstance(block["name"], list) else [block["name"]]
        out.extend(str(n) for n in names)
    return out


def declared_roles(params: dict, source: str | None = None) -> dict[str, str]:
    """``{role: field}`` of a dataset (its ``roles`` and ``domain`` -> ``domain_field``), checked: each field is a
    feature column of the dataset."""
    dataset = params.get("dataset_id")
    where = f"dataset {dataset!r}" + (f" (from {source})" if source else "")
    roles = params.get(ROLES_KEY)
    if roles is None:
        roles = {}
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        raise UserError(f"`roles` of {where} must map role names to column names (e.g. {{user: user_id, item: "
                        f"item_id}}), got {show_value(roles)}; fix the dataset block")
    out = dict(roles)
    domain_field = params.get("domain_field")
    if DOMAIN_ROLE in out and out[DOMAIN_ROLE] != domain_field:
        raise UserError(f"`roles` of {where} gives role 'domain' the column {out[DOMAIN_ROLE]!r}, but the domain is "
                        f"`domain_field` ({domain_field!r}); drop 'domain' from `roles`")
    if domain_field:
        out[DOMAIN_ROLE] = str(domain_field)
    fields = feature_names(params)
    for role, name in out.items():
        if fields and name not in fields:
            raise UserError(f"`roles` of {where} gives role {role!r} the column {name!r}, which is not an active "
                            f"categorical or numeric column of its feature_cols{close_matches(name, fields)}; add the "
                            f"column to feature_cols or fix the role")
    return out


def resolve_fields(params: dict, expid: str, source: str | None = None) -> dict:
    """``params`` with the roles in every ``*_fields`` key replaced by the dataset's fields and ``roles`` removed;
    every name left must be a field of the dataset (a one-line error names the key, the name and the fix)."""
    roles = declared_roles(params, source)
    params.pop(ROLES_KEY, None)
    for key in field_keys(params):
        params[key] = [name for entry in params[key] if (name := _resolve(entry, roles, params)) is not None]
        check_field_list(params, key, params[key], expid, roles)
    return params


def _resolve(entry: str, roles: dict, params: dict) -> str | None:
    if entry.startswith("(") and entry.endswith(")"):
        name = entry[1:-1].strip()
        if name in roles:
            return roles[name]
        return name if name in feature_names(params) else None
    return roles.get(entry, entry)


def check_field_list(params: dict, key: str, names, expid: str, roles: dict | None = None,
                     default: bool = False) -> None:
    """Every name of ``names`` (the value of model key ``key``) is an input field of the dataset, else a one-line
    error naming the expid, the dataset, the name and the fix."""
    fields = feature_names(params)
    if not fields:
        return  # no feature_cols to check against (the build reports that)
    roles = roles if roles is not None else {DOMAIN_ROLE: params.get("domain_field")}
    dataset = params.get("dataset_id")
    for name in names:
        if name in fields:
            continue
        role_list = ", ".join(f"{r}={f}" for r, f in sorted(roles.items()))
        if default:
            what = f"{key} (not set, so the model's default {list(names)})"
            fix = f"set {key} in the expid's block to roles or fields the dataset has (e.g. [user, item, domain])"
        else:
            what = key
            fix = (f"declare it in the dataset block (`roles: {{{name}: <column>}}`), write `({name})` to leave it "
                   f"out where a dataset lacks it, or set {key} to roles or fields the dataset has")
        raise UserError(f"expid {expid!r} on dataset {dataset!r}: {what} names {name!r}, which is neither a role "
                        f"nor a field of that dataset (its roles: {role_list or 'none'}){close_matches(name, fields)}; "
                        f"{fix}")


def dataset_defaults(params: dict) -> dict:
    """What a dataset block's roles and values imply, added to ``params`` (idempotent): the gAUC group column
    (a meta copy of the user field) where no ``group_id`` is named, and ``domain_names`` in resolved form."""
    user = (params.get(ROLES_KEY) or {}).get("user") if isinstance(params.get(ROLES_KEY), dict) else None
    if params.get("group_id") is None and user and isinstance(params.get("feature_cols"), list):
        names = feature_names(params, meta=True)
        if GROUP_COLUMN in names:
            raise UserError(f"dataset {params.get('dataset_id')!r} has a column {GROUP_COLUMN!r} but no `group_id`; "
                            f"add `group_id: {GROUP_COLUMN}` (a meta copy of the user id) to its dataset block")
        dtype = next((b.get("dtype", "str") for b in params["feature_cols"] if isinstance(b, dict)
                      and (b.get("name") == user or (isinstance(b.get("name"), list) and user in b["name"]))), "str")
        params["feature_cols"] = list(params["feature_cols"]) + [
            {"name": GROUP_COLUMN, "active": True, "dtype": dtype, "type": "meta",
             "preprocess": f"copy_from({user})"}]
        params["group_id"] = GROUP_COLUMN
    resolve_domain_names(params)
    return params


def legacy_names(domains: list) -> list[str]:
    """``S<value>``: the labels a model gives its domains when the config names none."""
    return [f"S{v}" for v in domains]


def resolve_domain_names(params: dict) -> None:
    """``domain_names`` of a dataset block in resolved form: a list with one label per domain, left out where it
    equals ``S<value>`` (the model's own labels, so a config showing those resolves and hashes as it always did).
    Without ``domain_names`` a domain is labelled by its value."""
    domains = params.get("domains")
    if not isinstance(domains, list) or not domains:
        return  # reported by the domain checks
    names = params.get("domain_names")
    where = f"`domain_names` of dataset {params.get('dataset_id')!r}"
    if names is None:
        names = [str(v) for v in domains]
    elif isinstance(names, str):
        if "{}" not in names:
            raise UserError(f"{where} is the text {names!r}; give a list with one name per domain, or a text with {{}} "
                            f"for the value (e.g. 'S{{}}')")
        names = [names.replace("{}", str(v)) for v in domains]
    elif not isinstance(names, list) or len(names) != len(domains):
        raise UserError(f"{where} must be a list with one name per entry of `domains` ({len(domains)}), or a text "
                        f"with {{}} for the value; fix the dataset block")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise UserError(f"{where} gives two domains the same name ({', '.join(names)}); name each once")
    if names == legacy_names(domains):
        params.pop("domain_names", None)
    else:
        params["domain_names"] = names


def dataset_block_of(params: dict) -> dict:
    """The dataset block that resolves back to the dataset keys of resolved ``params`` (a run written out as a
    config folder): without ``domain_names`` a resolved config means ``S<value>``, a block the value itself."""
    from ..schema import DATASET_TYPES

    block = {k: v for k, v in params.items() if k in DATASET_TYPES and k != "dataset_id"}
    if block.get("domain_names") is None:
        block["domain_names"] = "S{}"
    return block
