"""ExclusionPolicy: pattern validation, linear-time globs, and auto-detect of system accounts."""

from __future__ import annotations

import fnmatch
import functools
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import ConfigError, DirectoryUser, ExclusionPolicy, ExclusionSuggestion, SyncConfig
from calm_azure_sync.policies._glob import Glob
from calm_azure_sync.policies.autodetect import _hits, _surely_no_rule_word, _words

DOMAIN = "birch.sch.uk"


def person(user_id: str, given_name: str, surname: str, email: str | None = None, **fields) -> DirectoryUser:
    """An ordinary member of staff, with names filled in as a school's MIS sync does."""
    values = {
        "display_name": f"{given_name} {surname}",
        "mail": email or f"{given_name.lower()}.{surname.lower()}@{DOMAIN}",
        "given_name": given_name,
        "surname": surname,
        "assigned_license_count": 1,
    }
    return DirectoryUser(user_id, **{**values, **fields})


def account(user_id: str, email: str | None, display_name: str | None = None, **fields) -> DirectoryUser:
    """An account as system accounts usually are: no given name, no surname."""
    return DirectoryUser(user_id, display_name=display_name, mail=email, **fields)


def suggested(users):
    return {suggestion.user_id: suggestion for suggestion in ExclusionPolicy.suggest(users)}


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def test_every_bad_pattern_is_reported_at_once_with_its_index():
    with pytest.raises(ConfigError) as caught:
        ExclusionPolicy(patterns=["ok@*", "", "a b@x", "x" * 255, "tab\there", "nul\x00", 7])
    problems = caught.value.problems
    assert [problem.split(":")[0] for problem in problems] == [
        "patterns[1]",
        "patterns[2]",
        "patterns[3]",
        "patterns[4]",
        "patterns[5]",
        "patterns[6]",
    ]
    assert "must not be empty" in problems[0]
    assert "' ' (U+0020, whitespace)" in problems[1]
    assert "255 characters" in problems[2]
    assert "'\\t' (U+0009, whitespace)" in problems[3]
    assert "'\\x00' (U+0000, a control character)" in problems[4]
    assert "must be a string, got int" in problems[5]


def test_regex_syntax_is_refused_with_a_hint():
    with pytest.raises(ConfigError) as caught:
        ExclusionPolicy(patterns=["[a-z]+@school.org"])
    assert "not regular expressions" in caught.value.problems[0]
    assert "'[' (U+005B" in caught.value.problems[0]


def test_a_pattern_of_254_characters_is_accepted():
    ExclusionPolicy(patterns=["a" * 250 + "@*.x"])


@pytest.mark.parametrize(
    "pattern",
    ["svc-*", "*service*", "no?reply@*", "o'brien+tag@x.org", "!#$%&'+/=^_`{|}~-.@*", "jürgen@*", "小林@*", "किशोर@*"],
)
def test_letters_of_any_script_digits_and_email_punctuation_are_allowed(pattern):
    assert ExclusionPolicy(patterns=[pattern]).patterns == (pattern,)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("svc-*", "patterns: expected a list of strings, got str"),
        (None, "patterns: expected a list of strings, got NoneType"),
        (5, "patterns: expected a list of strings, got int"),
        ({"a": 1}, "patterns: expected a list of strings, got dict"),
        (b"svc", "patterns: expected a list of strings, got bytes"),
    ],
)
def test_patterns_must_be_a_list_of_strings(value, problem):
    with pytest.raises(ConfigError) as caught:
        ExclusionPolicy(patterns=value)
    assert caught.value.problems == [problem]


def test_user_ids_must_be_non_empty_strings():
    with pytest.raises(ConfigError) as caught:
        ExclusionPolicy(user_ids=["u-1", "", "  ", 3])
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "user_ids[1]",
        "user_ids[2]",
        "user_ids[3]",
    ]
    with pytest.raises(ConfigError, match="user_ids: expected a list"):
        ExclusionPolicy(user_ids="u-1")


def test_a_bad_user_id_is_shown_as_written():
    with pytest.raises(ConfigError) as caught:
        ExclusionPolicy(user_ids=["", 3, " " * 500])
    assert caught.value.problems[:2] == [
        "user_ids[0]: must be a non-empty string, got ''",
        "user_ids[1]: must be a non-empty string, got 3",
    ]
    assert len(caught.value.problems[2]) < 120  # a huge value is cut short


def test_any_iterable_is_accepted_and_stored_as_a_tuple():
    policy = ExclusionPolicy(patterns=(pattern for pattern in ["a@*", "b@*"]), user_ids={"u-1"})
    assert policy.patterns == ("a@*", "b@*")
    assert policy.user_ids == ("u-1",)


def test_sync_config_reports_pattern_problems_under_exclusions():
    data = {"trust_site_id": "oak", "mappings": [], "exclusions": {"patterns": ["ok@*", "a b"], "user_ids": []}}
    with pytest.raises(ConfigError) as caught:
        SyncConfig.from_dict(data)
    assert caught.value.problems[0].startswith("exclusions.patterns[1]: 'a b' has characters")


@given(
    st.one_of(
        st.lists(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.binary(max_size=5)), max_size=5),
        st.text(),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
    )
)
def test_random_patterns_raise_only_config_error(value):
    problems: list[str] = []
    try:
        policy = ExclusionPolicy(patterns=value)
    except ConfigError as error:
        problems = error.problems
    else:
        # What was accepted can be used.
        assert policy.matches("someone@example.org") in (None, *policy.patterns)
        return
    assert problems
    assert all(problem.startswith("patterns") for problem in problems)


# --------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------


def test_matching_is_case_insensitive_against_the_whole_email():
    policy = ExclusionPolicy(patterns=["*service*", "noreply@*", "ADMIN@BIRCH.SCH.UK"])
    assert policy.matches("Print.Service@x.org") == "*service*"
    assert policy.matches("NoReply@birch.sch.uk") == "noreply@*"
    assert policy.matches("admin@birch.sch.uk") == "ADMIN@BIRCH.SCH.UK"
    assert policy.matches("x.noreply@birch.sch.uk") is None  # whole email, not a search
    assert policy.matches("admin@birch.sch.uk.evil.org") is None
    assert policy.matches(None) is None


def test_question_mark_is_exactly_one_character():
    policy = ExclusionPolicy(patterns=["room?@*"])
    assert policy.matches("room1@x.org") == "room?@*"
    assert policy.matches("room@x.org") is None
    assert policy.matches("room12@x.org") is None


def test_the_first_pattern_in_policy_order_is_reported():
    policy = ExclusionPolicy(patterns=["*@birch.sch.uk", "svc-*", "svc-backup@birch.sch.uk", "*backup*"])
    assert policy.matches("svc-backup@birch.sch.uk") == "*@birch.sch.uk"
    policy = ExclusionPolicy(patterns=["*backup*", "svc-backup@birch.sch.uk", "svc-*"])
    assert policy.matches("svc-backup@birch.sch.uk") == "*backup*"
    policy = ExclusionPolicy(patterns=["svc-backup@birch.sch.uk", "*backup*"])
    assert policy.matches("svc-backup@birch.sch.uk") == "svc-backup@birch.sch.uk"
    policy = ExclusionPolicy(patterns=["s?c-*", "svc-*"])
    assert policy.matches("svc-backup@birch.sch.uk") == "s?c-*"


def test_reason_excluded_names_the_user_id_or_the_pattern():
    policy = ExclusionPolicy(patterns=["*service*"], user_ids=["u-9"])
    assert policy.reason_excluded(account("u-9", "jane@x.org")) == "excluded by user id"
    assert policy.reason_excluded(account("u-1", "Print.Service@x.org")) == (
        "email matches exclusion pattern '*service*'"
    )
    assert policy.reason_excluded(account("u-2", "jane@x.org")) is None
    assert policy.reason_excluded(account("u-3", None)) is None


def test_with_patterns_adds_new_patterns_once():
    policy = ExclusionPolicy(patterns=["svc-*"], user_ids=["u-1"])
    grown = policy.with_patterns(["SVC-*", "noreply@*", "noreply@*", "*no-reply*"])
    assert grown.patterns == ("svc-*", "noreply@*", "*no-reply*")
    assert grown.user_ids == ("u-1",)
    assert policy.patterns == ("svc-*",)  # unchanged: policies are values
    assert grown.matches("NoReply@x.org") == "noreply@*"
    with pytest.raises(ConfigError, match=r"patterns\[0\]"):
        policy.with_patterns(["a b"])


def test_with_user_ids_adds_new_ids_once():
    assert ExclusionPolicy(user_ids=["u-1"]).with_user_ids(["u-2", "u-1", "u-2"]).user_ids == ("u-1", "u-2")


def test_to_dict_round_trips():
    policy = ExclusionPolicy(patterns=["Svc-*", "*@x.org"], user_ids=["u-1"])
    assert policy.to_dict() == {"patterns": ["Svc-*", "*@x.org"], "user_ids": ["u-1"]}
    assert ExclusionPolicy(**policy.to_dict()) == policy
    assert hash(ExclusionPolicy(**policy.to_dict())) == hash(policy)


def test_pathological_patterns_stay_linear():
    address = "a" * 10_000
    assert not Glob("*a*a*a*a*a*a*b").match(address)
    assert Glob("*a*a*a*a*a*a*a").match(address)
    assert not Glob("*a?a*a?a*a?a*a?b*").match(address)
    assert not Glob("*" + "a*" * 120 + "b").match(address)
    policy = ExclusionPolicy(patterns=["*a*a*a*a*a*a*b", "*?a?*a?*b?*"])
    assert policy.matches(address + "@x.org") is None


@functools.cache
def reference_match(pattern: str, text: str) -> bool:
    """The textbook dynamic programme over (pattern position, text position)."""
    # reachable[j]: the pattern read so far can match text[:j].
    reachable = [True] + [False] * len(text)
    for symbol in pattern:
        if symbol == "*":
            for j in range(1, len(text) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [
                reachable[j] and (symbol == "?" or symbol == text[j]) for j in range(len(text))
            ]
    return reachable[-1]


SMALL_ALPHABET = "ab.@"
pattern_text = st.text(alphabet=SMALL_ALPHABET + "*?", min_size=1, max_size=12)
email_text = st.text(alphabet=SMALL_ALPHABET + "AB", max_size=20)


@given(pattern_text, email_text)
def test_glob_agrees_with_the_reference_matcher(pattern, email):
    expected = reference_match(pattern.lower(), email.lower())
    assert (ExclusionPolicy(patterns=[pattern]).matches(email) == pattern) is expected
    # fnmatch is a second opinion: our pattern alphabet holds none of its "[" syntax.
    assert fnmatch.fnmatchcase(email.lower(), pattern.lower()) is expected


@given(st.lists(pattern_text, min_size=1, max_size=8), email_text)
def test_first_match_is_the_first_pattern_that_matches(patterns, email):
    expected = next((p for p in patterns if reference_match(p.lower(), email.lower())), None)
    assert ExclusionPolicy(patterns=patterns).matches(email) == expected


@given(
    st.text(alphabet="ab*?", min_size=1, max_size=40),
    st.text(alphabet="ab", min_size=1, max_size=30).map(lambda seed: (seed * 10_000)[:10_000]),
)
@settings(max_examples=30)
def test_long_addresses_with_many_stars_complete(pattern, address):
    # No timing assertion: hypothesis's deadline fails the test if a match blows up.
    Glob(pattern).match(address)


@given(st.text(alphabet="ab*?", min_size=1, max_size=12), st.text(alphabet="ab", max_size=40))
def test_compiled_glob_agrees_with_the_reference_on_longer_texts(pattern, text):
    assert Glob(pattern).match(text) is reference_match(pattern, text)


# --------------------------------------------------------------------------
# Auto-detect: the rules
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "reason_start"),
    [
        (account("u", "noreply@birch.sch.uk", "No Reply"), "no-reply mailbox"),
        (account("u", "no-reply@birch.sch.uk"), "no-reply mailbox"),
        (account("u", "DoNotReply@birch.sch.uk"), "no-reply mailbox"),
        (account("u", "do-not-reply@birch.sch.uk"), "no-reply mailbox"),
        (account("u", "notifications@birch.sch.uk"), "notification or system mailbox"),
        (account("u", "alerts@birch.sch.uk"), "notification or system mailbox"),
        (account("u", "MAILER-DAEMON@birch.sch.uk"), "notification or system mailbox"),
        (account("u", "postmaster@birch.sch.uk"), "notification or system mailbox"),
        (account("u", "svc-backup@birch.sch.uk", "Backup"), "service account"),
        (account("u", "backup@birch.sch.uk", "Backup Service"), "service account"),
        (account("u", "print.service@birch.sch.uk"), "service account"),
        (account("u", "teams.bot@birch.sch.uk", "Teams Bot"), "bot account"),
        (account("u", "Sync_DC1_1a2b3c4d@birch.onmicrosoft.com"), "Entra Connect"),
        (account("u", "ADToAADSyncServiceAccount@birch.onmicrosoft.com"), "Entra Connect"),
        (
            account("u", "dirsync@birch.sch.uk", "On-Premises Directory Synchronization Service Account"),
            "Entra Connect",
        ),
        (account("u", "room101@birch.sch.uk"), "room or equipment mailbox"),
        (account("u", "mr3@birch.sch.uk", "Meeting Room 3"), "room or equipment mailbox"),
        (account("u", "boardroom@birch.sch.uk"), "room or equipment mailbox"),
        (account("u", "minibus2@birch.sch.uk", "Minibus 2"), "room or equipment mailbox"),
        (account("u", "projector.hall@birch.sch.uk"), "room or equipment mailbox"),
        (account("u", "office@birch.sch.uk", "School Office"), "shared mailbox"),
        (account("u", "enquiries@birch.sch.uk"), "shared mailbox"),
        (account("u", "finance@birch.sch.uk"), "shared mailbox"),
        (account("u", "stmarys.reception@birch.sch.uk", "St Marys Reception"), "shared mailbox"),
        (account("u", "shared.mailbox.pe@birch.sch.uk"), "shared mailbox"),
        (account("u", "scanner.staffroom@birch.sch.uk", "Scanner Staffroom"), "scanner or printer"),
        (account("u", "scan2email@birch.sch.uk"), "scanner or printer"),
        (account("u", "mfd-library@birch.sch.uk"), "scanner or printer"),
        (account("u", "printer@birch.sch.uk", "Printer"), "scanner or printer"),
        (person("u", "Jane", "Smith", assigned_license_count=0), "has no licence assigned"),
        (person("u", "Jane", "Smith", account_enabled=False), "account is disabled"),
    ],
)
def test_each_rule_finds_its_accounts(user, reason_start):
    found = suggested([user, person("p", "Robert", "Botham")])
    assert set(found) == {"u"}
    assert any(reason.startswith(reason_start) for reason in found["u"].reasons), found["u"].reasons


@pytest.mark.parametrize(
    "user",
    [
        account("p", "robert.botham@birch.sch.uk", "Robert Botham"),
        account("p", "sarah.jones@birch.sch.uk", "Servicedesk Sarah"),
        DirectoryUser("p", "Servicedesk Sarah", "sarah.jones@birch.sch.uk", given_name="Sarah", surname="Jones"),
        person("p", "Jan", "Bot"),
        person("p", "Robert", "Service"),
        person("p", "Anna", "Room"),
        person("p", "Peter", "Printer"),
        account("p", "mrs.printer@birch.sch.uk", "Mrs Printer"),
        person("p", "Jane", "Smith", display_name="Smith, Jane (Reception)"),
        account("p", "j.smith@birch.sch.uk", "Jane Smith (Minibus Driver)", given_name="Jane"),
        person("p", "Amelia", "Officer"),
        person("p", "Tom", "Alerton"),
        person("p", "Scott", "Scanlan"),
        person("p", "Ruth", "Broomfield"),
        person("p", "Ed", "McBotney"),
        person("p", "Jo", "Svcek"),
        person("p", "Jane", "Smith", assigned_license_count=None),  # unknown licences are not "none"
        account("p", "x7f3k@birch.sch.uk", "Jane Smith"),
    ],
    ids=lambda user: f"{user.display_name} <{user.mail}>",
)
def test_ordinary_staff_are_not_flagged(user):
    assert ExclusionPolicy.suggest([user]) == []


def test_weak_words_need_support_from_missing_names():
    # The same address, once a person (names filled in), once not.
    with_names = person("u", "Jan", "Bot")
    without_names = account("u", "jan.bot@birch.sch.uk", "Jan Bot")
    assert ExclusionPolicy.suggest([with_names]) == []
    (only,) = ExclusionPolicy.suggest([without_names])
    assert only.reasons[-1] == "has no given name or surname"


def test_a_display_name_alone_counts_only_when_it_is_all_system_words():
    assert ExclusionPolicy.suggest([account("u", "sarah.jones@birch.sch.uk", "Servicedesk Sarah")]) == []
    (only,) = ExclusionPolicy.suggest([account("u", "r17@birch.sch.uk", "Room 17")])
    assert only.pattern == "r17@birch.sch.uk"


def test_one_suggestion_per_user_with_every_reason():
    user = account("u", "noreply@birch.sch.uk", "No Reply", account_enabled=False, assigned_license_count=0)
    (only,) = ExclusionPolicy.suggest([user, user])
    assert [reason.split(":")[0] for reason in only.reasons] == [
        "no-reply mailbox",
        "has no licence assigned",
        "account is disabled",
    ]
    assert only == ExclusionSuggestion("u", "noreply@birch.sch.uk", "noreply@*", only.reasons)


def test_users_without_an_email_are_not_suggested():
    assert ExclusionPolicy.suggest([account("u", None, "No Reply", account_enabled=False)]) == []


def test_suggestions_are_sorted_by_email():
    users = [
        account("u3", "svc-z@birch.sch.uk"),
        account("u1", "Alerts@birch.sch.uk"),
        account("u2", "noreply@birch.sch.uk"),
    ]
    assert [s.user_id for s in ExclusionPolicy.suggest(users)] == ["u1", "u2", "u3"]
    assert ExclusionPolicy.suggest(users) == ExclusionPolicy.suggest(list(reversed(users)))


def test_suggestions_come_from_autodetect_and_are_still_importable_from_exclusion():
    # The reconciler and hosts import these from calm_azure_sync.policies.exclusion;
    # the classes live in autodetect since the module was split.
    import calm_azure_sync.policies.autodetect as autodetect
    import calm_azure_sync.policies.exclusion as exclusion

    assert exclusion.Suggestions is autodetect.Suggestions
    assert exclusion.ExclusionSuggestion is autodetect.ExclusionSuggestion is ExclusionSuggestion
    users = [account("u", "noreply@birch.sch.uk")]
    suggestions = ExclusionPolicy.suggest(users)
    assert type(suggestions) is exclusion.Suggestions
    assert suggestions == autodetect.suggest(users)
    assert suggestions.patterns == ["noreply@*"]


# --------------------------------------------------------------------------
# Auto-detect: the suggested globs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "pattern"),
    [
        (account("u", "noreply@birch.sch.uk"), "noreply@*"),
        (account("u", "school-no-reply@birch.sch.uk"), "*no-reply*"),
        (account("u", "Sync_DC1_1a2b3c4d@birch.onmicrosoft.com"), "sync_*@*.onmicrosoft.com"),
        (account("u", "svc-backup@birch.sch.uk"), "svc-*"),
        (account("u", "backup.svc@birch.sch.uk"), "*.svc@*"),
        (account("u", "teams.bot@birch.sch.uk", "Teams Bot"), "teams.bot@*"),
        (account("u", "minibus2@birch.sch.uk"), "*minibus*"),
        (person("u", "Jane", "Smith", account_enabled=False), "jane.smith@birch.sch.uk"),
        (person("u", "Jane", "Smith", assigned_license_count=0), "jane.smith@birch.sch.uk"),
    ],
)
def test_the_most_general_safe_glob_is_suggested(user, pattern):
    (only,) = ExclusionPolicy.suggest([user, person("p", "Robert", "Botham")])
    assert only.pattern == pattern


def test_a_glob_that_would_catch_a_person_falls_back_to_a_narrower_one():
    users = [account("bot", "robot@birch.sch.uk", "Robot"), person("p1", "Robert", "Botham")]
    (only,) = ExclusionPolicy.suggest(users)
    assert only.pattern == "robot@*"  # never *bot*: it would exclude Robert Botham
    users = [account("svc", "backup.svc@birch.sch.uk"), person("p2", "Ann", "Jones", email="ann.svc@oak.sch.uk")]
    # ann.svc is flagged too (svc names no person), so *.svc@* stays safe.
    assert {s.pattern for s in ExclusionPolicy.suggest(users)} == {"*.svc@*"}
    users = [account("room", "room.1@birch.sch.uk"), person("p3", "Ann", "Room", email="ann.room@birch.sch.uk")]
    (only,) = ExclusionPolicy.suggest(users)
    assert only.pattern == "room.*"  # token-bounded; *.room@* would exclude Ann Room


def test_a_weak_word_that_is_the_users_own_name_is_no_evidence():
    assert ExclusionPolicy.suggest([person("p", "Robert", "Bot", email="bot2@birch.sch.uk")]) == []
    assert ExclusionPolicy.suggest([person("p", "Peter", "Printer", email="printer@birch.sch.uk")]) == []


def test_no_pattern_when_an_unsuggested_account_shares_the_address():
    # Only the exact address could name the disabled duplicate, and it names the active person too.
    old_account = person("old", "Jane", "Smith", email="jane.smith@birch.sch.uk", account_enabled=False)
    active = person("new", "Jane", "Smith", email="Jane.Smith@birch.sch.uk")
    assert ExclusionPolicy.suggest([old_account, active]) == []
    assert [s.user_id for s in ExclusionPolicy.suggest([old_account])] == ["old"]


def test_the_exact_address_is_the_last_resort():
    users = [
        account("u", "lab@birch.sch.uk", "Lab"),
        person("p", "Mo", "Lab", email="lab@other.sch.uk"),
    ]
    (only,) = ExclusionPolicy.suggest(users)
    assert only.pattern == "lab@birch.sch.uk"


STAFF_GIVEN = ["Robert", "Sarah", "Jane", "Jan", "Amelia", "Mohammed", "Priya", "Wei", "Siobhan", "Zoë", "Łukasz"]
STAFF_SURNAMES = [
    "Botham", "Bot", "Printer", "Service", "Room", "Jones", "O'Neil", "Smith-Patel",
    "Scanlan", "Broomfield", "Officer", "McBotney", "Nguyen", "Kowalski",
]
SYSTEM_ADDRESSES = [
    "noreply", "no-reply", "donotreply", "svc-backup", "svc.sims", "teams.bot", "room101", "boardroom",
    "office", "school.office", "enquiries", "scanner.staffroom", "scan2email", "print.service", "minibus1",
    "notifications", "postmaster", "Sync_DC1_0a1b", "shared.mailbox.pe", "it.support", "reception",
]
DISPLAY_NAMES = [None, "No Reply", "Backup Service", "Teams Bot", "Room 101", "Office", "Scanner", "Printer"]


@st.composite
def directory(draw):
    users = []
    for index in range(draw(st.integers(0, 12))):
        given, surname = draw(st.sampled_from(STAFF_GIVEN)), draw(st.sampled_from(STAFF_SURNAMES))
        local = draw(st.sampled_from([f"{given}.{surname}", f"{given[0]}{surname}", f"{surname}{index}"]))
        users.append(
            DirectoryUser(
                f"p{index}",
                display_name=draw(st.sampled_from([f"{given} {surname}", f"Servicedesk {given}", f"Mrs {surname}"])),
                mail=f"{local.replace(' ', '')}@{draw(st.sampled_from([DOMAIN, 'oak.sch.uk']))}",
                given_name=given,
                surname=surname,
                assigned_license_count=draw(st.sampled_from([None, 1, 2])),
            )
        )
    for index in range(draw(st.integers(0, 12))):
        local = draw(st.sampled_from(SYSTEM_ADDRESSES)) + draw(st.sampled_from(["", "2", "-old"]))
        domain = draw(st.sampled_from([DOMAIN, "oak.sch.uk", "birch.onmicrosoft.com"]))
        users.append(
            DirectoryUser(
                f"s{index}",
                display_name=draw(st.sampled_from(DISPLAY_NAMES)),
                mail=f"{local}@{domain}",
                account_enabled=draw(st.booleans()),
                assigned_license_count=draw(st.sampled_from([None, 0, 1])),
            )
        )
    return draw(st.permutations(users))


@given(directory())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_every_suggested_glob_excludes_its_account_and_no_unsuggested_one(users):
    suggestions = ExclusionPolicy.suggest(users)
    suggested_ids = {s.user_id for s in suggestions}
    assert len(suggested_ids) == len(suggestions)
    for suggestion in suggestions:
        policy = ExclusionPolicy(patterns=[suggestion.pattern])  # a valid pattern
        own = next(user for user in users if user.id == suggestion.user_id)
        assert policy.reason_excluded(own) is not None
        assert suggestion.reasons
        for user in users:
            if user.id not in suggested_ids:
                assert policy.reason_excluded(user) is None, (suggestion, user)
    # Accepting every suggestion excludes exactly the suggested accounts.
    accepted = ExclusionPolicy().with_patterns(s.pattern for s in suggestions)
    assert {user.id for user in users if accepted.reason_excluded(user)} == suggested_ids
    assert [s.email.lower() for s in suggestions] == sorted(s.email.lower() for s in suggestions)


@given(directory())
def test_staff_with_names_and_a_licence_are_never_suggested(users):
    staff = {user.id for user in users if user.id.startswith("p") and user.assigned_license_count != 0}
    assert not staff & {s.user_id for s in ExclusionPolicy.suggest(users)}


@given(
    st.lists(
        st.builds(
            DirectoryUser,
            id=st.text(string.ascii_letters, min_size=1, max_size=4),
            display_name=st.one_of(st.none(), st.text(max_size=30)),
            mail=st.one_of(st.none(), st.emails(), st.text(max_size=30).map(lambda t: t + "@x.org")),
            given_name=st.one_of(st.none(), st.text(max_size=5)),
            surname=st.one_of(st.none(), st.text(max_size=5)),
            account_enabled=st.booleans(),
            assigned_license_count=st.one_of(st.none(), st.integers(0, 2)),
        ),
        max_size=10,
    )
)
def test_suggest_handles_any_text_and_keeps_its_promise(users):
    suggestions = ExclusionPolicy.suggest(users)
    accepted = ExclusionPolicy().with_patterns(s.pattern for s in suggestions)
    first_record = {}
    for user in users:
        first_record.setdefault(user.id, user)
    suggested_ids = {s.user_id for s in suggestions}
    for user in first_record.values():
        assert (accepted.reason_excluded(user) is not None) is (user.id in suggested_ids), user


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["bot", "Bot", "BOT", "noReply", "Scan2Email", "McBot", "ROOM", "Svc", "robert", "x"]),
            st.text(alphabet=string.ascii_letters + string.digits, max_size=6),
        ),
        max_size=5,
    ).flatmap(lambda parts: st.sampled_from([".", " ", "-", ""]).map(lambda sep: sep.join(parts)))
)
def test_the_shortcut_for_plain_text_never_hides_a_rule_word(text):
    if _surely_no_rule_word(text):
        assert _hits(_words(text), frozenset()) == []


def test_excluded_user_ids_match_whatever_their_case() -> None:
    policy = ExclusionPolicy(user_ids=["6EA91A8D-E32E-41A1-B7BD-D2D185EED0E0"])
    user = DirectoryUser("6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0", mail="adams@contoso.com")
    assert policy.reason_excluded(user) == "excluded by user id"
