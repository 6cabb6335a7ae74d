"""Auto-detect: accounts that look like no person, each with a safe glob to exclude it.

The rule table ``_RULES`` comes first, as data; then the word splitting the
rules read, the detection, and the glob chosen for each suggestion.
:meth:`~calm_azure_sync.ExclusionPolicy.suggest` is the public entry point
and calls :func:`suggest`.

The table is read from top to bottom. Word rules look at the words of the
address's local part and of the display name: ``robert.botham`` is the words
``robert`` and ``botham``, so it never matches the word ``bot``. Words come
from splitting on punctuation, on letter/digit boundaries and on camel case
(``ADToAADSyncServiceAccount`` is ``ad to aad sync service account``).

A rule's *strong* words (``noreply``, ``svc``, ``scanner``…) name no person
and are enough alone in the local part. Its *weak* words are also people's
names (Bot, Room, Printer, Service) or words staff put in their display name
("Jane Smith (Reception)"), so they count only with support:

* the local part is made of nothing but system words and numbers
  (``room101@``, ``school.office@``, ``print.service@``), or
* the account has no given name and no surname (and no title such as Mrs in
  its display name) and the display name holds a rule word too.

The display name alone counts only when it too is nothing but system words
("Meeting Room 3", "Backup Service") and the account has no given name and no
surname. Accounts without a licence and disabled accounts are suggested on
that fact alone.

Each suggestion carries a glob. It is the most general glob from the evidence
that still matches no account of the same input that is not suggested too:
``noreply@*`` or ``*no-reply*`` for long unambiguous words, token-bounded
globs (``svc-*``, ``*.bot@*``) for short ones, then the whole local part on
any domain, then the exact address. Users without an email are never
suggested: no glob can name them (exclude them by id).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence

import attrs

from ..model import DirectoryUser
from ._glob import MAX_PATTERN_LENGTH, WILDCARD_RUN, Glob, character_problem, pattern_problem
from ._suggestions import ExclusionSuggestion, Suggestions

__all__ = ["ExclusionSuggestion", "Suggestions", "suggest"]

# --------------------------------------------------------------------------
# The auto-detect rules: the table a reviewer reads.
# --------------------------------------------------------------------------


def _phrases(text: str) -> tuple[tuple[str, ...], ...]:
    """``"noreply, no reply"`` -> ``(("noreply",), ("no", "reply"))``: one phrase per comma."""
    return tuple(tuple(phrase.split()) for phrase in text.split(",") if phrase.strip())


@attrs.frozen
class _Rule:
    """One auto-detect rule.

    ``looks_at`` says what the rule reads: ``"words"`` (local part and display
    name, see the module docstring), ``"email"`` (``email_globs`` against the
    whole address; the glob is also the suggested pattern), ``"display name"``
    (the whole display name, as lowercase words, is one of ``display_names``)
    or ``"account"`` (``account`` is true of the user).
    """

    name: str
    looks_at: str
    reason: str
    strong: tuple[tuple[str, ...], ...] = attrs.field(default="", converter=_phrases)
    weak: tuple[tuple[str, ...], ...] = attrs.field(default="", converter=_phrases)
    email_globs: tuple[str, ...] = ()
    display_names: tuple[tuple[str, ...], ...] = attrs.field(default="", converter=_phrases)
    account: Callable[[DirectoryUser], bool] | None = None


def _has_no_licence(user: DirectoryUser) -> bool:
    # None means Graph did not say (assignedLicenses not selected): unknown, not "none".
    return user.assigned_license_count == 0


def _is_disabled(user: DirectoryUser) -> bool:
    return not user.account_enabled


_RULES: tuple[_Rule, ...] = (
    _Rule(
        name="entra-connect",
        looks_at="email",
        reason="Entra Connect directory synchronisation account",
        # Sync_<server>_<hex>@<tenant>.onmicrosoft.com, the legacy
        # ADToAADSyncServiceAccount, and the on-premises MSOL_/AAD_ accounts
        # when they are themselves synced up.
        email_globs=("sync_*@*.onmicrosoft.com", "adtoaadsyncserviceaccount@*", "msol_*@*", "aad_*@*"),
    ),
    _Rule(
        name="entra-connect-name",
        looks_at="display name",
        reason="Entra Connect directory synchronisation account",
        display_names=(
            "on premises directory synchronization service account,"
            " on premises directory synchronisation service account"
        ),
    ),
    _Rule(
        name="no-reply",
        looks_at="words",
        reason="no-reply mailbox",
        strong=(
            "noreply, donotreply, dontreply, no reply, do not reply, dont reply,"
            " donotrespond, do not respond"
        ),
    ),
    _Rule(
        name="notifications",
        looks_at="words",
        reason="notification or system mailbox",
        strong=(
            "notifications, notification, notifier, notify, alerts, postmaster,"
            " mailerdaemon, daemon, bounces"
        ),
        weak="alert, bounce",
    ),
    _Rule(
        name="service",
        looks_at="words",
        reason="service account",
        strong="svc, svcaccount, serviceaccount, service account",
        weak="service, automation, integration, api",
    ),
    _Rule(
        name="bot",
        looks_at="words",
        reason="bot account",
        strong="chatbot, teamsbot, teams bot",
        weak="bot, bots, robot",
    ),
    _Rule(
        name="room",
        looks_at="words",
        reason="room or equipment mailbox",
        strong=(
            "boardroom, board room, meetingroom, meeting room, conferenceroom, conference room,"
            " confroom, conf room, equipment, projector, projectors, minibus, minibuses, mini bus,"
            " sports hall, laptop trolley, ipad trolley, room booking"
        ),
        weak="room, rooms, suite, studio, lab, laptops, ipads, trolley",
    ),
    _Rule(
        name="shared",
        looks_at="words",
        reason="shared mailbox",
        strong="sharedmailbox, shared mailbox",
        weak=(
            "office, admin, info, enquiries, enquiry, finance, accounts, payroll, invoices,"
            " reception, admissions, attendance, absence, absences, exams, hr, helpdesk,"
            " servicedesk, support, itsupport, safeguarding, careers, library, trips, lettings,"
            " governors, parents, newsletter, website, contact, hello, marketing, bookings, jobs,"
            " recruitment, vacancies, catering, transport, reprographics, repro, alumni, pta,"
            " studentservices"
        ),
    ),
    _Rule(
        name="printer",
        looks_at="words",
        reason="scanner or printer",
        strong=(
            "scanner, scanners, scan 2 email, scan 2 mail, scantoemail, scan to email,"
            " scan to folder, mfd, mfp, copier, copiers, photocopier, photocopiers, papercut"
        ),
        weak="printer, printers, print, printing, scan, scans, ricoh, kyocera, konica, xerox",
    ),
    _Rule(name="no-licence", looks_at="account", reason="has no licence assigned", account=_has_no_licence),
    _Rule(name="disabled", looks_at="account", reason="account is disabled", account=_is_disabled),
)

def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that often sit beside a rule word in a system account's name but say
# nothing alone. "A local part made only of system words" means rule words,
# these, and numbers. Honorifics are deliberately absent: "Mrs Printer" is a person.
_SYSTEM_WORDS = _word_set(
    """
    school academy college trust main general central team teams dept department
    mailbox mail email shared account system systems auto automated automatic
    microsoft azure o365 m365 office365 exchange it ict tech backup sync
    the and of for to staff staffroom student students pupil pupils sixth form sixthform
    primary secondary junior juniors infant infants nursery upper lower front desk
    calendar booking resource resources site hub test
    """
) | frozenset(word for rule in _RULES for phrase in rule.strong + rule.weak for word in phrase)

# A title in the display name says "person" as loudly as a given name does.
_HONORIFICS = _word_set("mr mrs ms miss mx dr prof sir dame rev revd")

_NO_NAMES_REASON = "has no given name or surname"
_LOCAL_PART_SEPARATORS = frozenset("._-+")
# Contains-globs (``*word*``) are only offered for strong evidence this long:
# a short word ("svc", "mfd") inside a future colleague's address is too likely.
_MIN_CONTAINS_LENGTH = 6


# --------------------------------------------------------------------------
# What auto-detect returns
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Words, detection and the glob for each suggestion
# --------------------------------------------------------------------------


# Runs of digits, or of letters: a letter/digit boundary is a word boundary.
_WORD_RUN = re.compile(r"\d+|[^\W\d_]+")


def _split_camel_case(word: str, start: int, into: list[tuple[str, int, int]]) -> None:
    """Split a run of letters where camel case starts a new word ("NoReply", "AADSync")."""
    begin = 0
    for position in range(1, len(word)):
        previous, current = word[position - 1], word[position]
        if (previous.islower() and current.isupper()) or (
            # "AADSync": an upper-case run ends before the capital that starts a word.
            previous.isupper()
            and current.isupper()
            and position + 1 < len(word)
            and word[position + 1].islower()
        ):
            into.append((word[begin:position].lower(), start + begin, start + position))
            begin = position
    into.append((word[begin:].lower(), start + begin, start + len(word)))


def _words(text: str) -> list[tuple[str, int, int]]:
    """Lowercase words of ``text`` with their spans: split on punctuation, digits and camel case."""
    words: list[tuple[str, int, int]] = []
    for run in _WORD_RUN.finditer(text):
        word = run.group()
        # Fast path: most runs are one plain word or one number.
        if word.islower() or word.isupper() or word.isdigit() or (word[0].isupper() and word[1:].islower()):
            words.append((word.lower(), run.start(), run.end()))
        else:
            _split_camel_case(word, run.start(), words)
    return words


# First word of a phrase -> (phrase, rule index, strong?), for one pass over the words.
_PHRASES_BY_FIRST_WORD: dict[str, list[tuple[tuple[str, ...], int, bool]]] = {}
for _rule_index, _rule in enumerate(_RULES):
    for _strength, _phrase_list in ((True, _rule.strong), (False, _rule.weak)):
        for _phrase in _phrase_list:
            _PHRASES_BY_FIRST_WORD.setdefault(_phrase[0], []).append((_phrase, _rule_index, _strength))
_EMAIL_RULE_GLOBS = tuple(
    (rule_index, tuple(Glob(glob) for glob in rule.email_globs))
    for rule_index, rule in enumerate(_RULES)
    if rule.looks_at == "email"
)
# Every email-rule glob starts with a literal: one startswith call rules most addresses out.
_EMAIL_RULE_HEADS = tuple(
    glob.split("*", 1)[0] for rule in _RULES if rule.looks_at == "email" for glob in rule.email_globs
)
assert all(_EMAIL_RULE_HEADS), "an email rule glob without a literal head defeats the fast path"
_ACCOUNT_RULES = tuple(rule for rule in _RULES if rule.looks_at == "account")


# Words whose presence sends a text down the full path: rule phrases, and the
# display-name rules' names (which must not rely on containing a rule word).
_FIRST_WORDS = frozenset(_PHRASES_BY_FIRST_WORD) | frozenset(
    name[0] for rule in _RULES for name in rule.display_names
)


def _surely_no_rule_word(text: str) -> bool:
    """True only when :func:`_words` of ``text`` certainly holds no rule phrase.

    A shortcut for the common case, all in C: an ASCII text whose letter runs
    are all lower case, all upper case or title case splits into exactly its
    lowered runs, so one set test answers. Anything else says False and
    takes the full path.
    """
    return (
        text.isascii()
        and (text.islower() or text.istitle() or text.isupper() or not text)
        and _FIRST_WORDS.isdisjoint(_WORD_RUN.findall(text.lower()))
    )


@attrs.frozen
class _Hit:
    """A rule phrase found in a list of words; ``start``/``end`` span the source text."""

    rule_index: int
    strong: bool
    start: int
    end: int


def _hits(words: list[tuple[str, int, int]], own_names: frozenset[str]) -> list[_Hit]:
    """The rule phrases in ``words``; weak ones that are the user's own given name or surname don't count."""
    found: list[_Hit] = []
    for position, (word, start, _) in enumerate(words):
        for phrase, rule_index, strong in _PHRASES_BY_FIRST_WORD.get(word, ()):
            last = position + len(phrase) - 1
            # Peter Printer's "printer2@" is his name, whatever the rest of the address.
            if not strong and own_names.issuperset(phrase):
                continue
            if last < len(words) and all(
                words[position + offset][0] == part for offset, part in enumerate(phrase)
            ):
                found.append(_Hit(rule_index, strong, start, words[last][2]))
    # "teams bot" already says "bot": keep only the longest phrase of a rule at each place.
    return [
        hit
        for hit in found
        if not any(
            other is not hit
            and other.rule_index == hit.rule_index
            and other.start <= hit.start
            and hit.end <= other.end
            and other.end - other.start > hit.end - hit.start
            for other in found
        )
    ]


def _only_system_words(words: list[tuple[str, int, int]]) -> bool:
    return bool(words) and all(word in _SYSTEM_WORDS or word.isdigit() for word, _, _ in words)


@attrs.frozen
class _Finding:
    """Why one user was flagged, and the local-part evidence its glob can be built from."""

    reasons: tuple[str, ...]
    email_globs: tuple[str, ...]
    local_hits: tuple[_Hit, ...]


def _describe(rule: _Rule, local: str, display: str, local_hits: list[_Hit], display_hits: list[_Hit]) -> str:
    places = []
    if local_hits:
        shown = ", ".join(dict.fromkeys(repr(local[hit.start : hit.end]) for hit in local_hits))
        places.append(f"{shown} in the address")
    if display_hits:
        shown = ", ".join(dict.fromkeys(repr(display[hit.start : hit.end]) for hit in display_hits))
        places.append(f"{shown} in the display name")
    return f"{rule.reason}: {' and '.join(places)}"


def _plainly_a_person(user: DirectoryUser, local: str, display: str, lowered: str) -> bool:
    """Most users are people: no rule word anywhere and nothing odd about the account (the fast path)."""
    return (
        _surely_no_rule_word(local)
        and _surely_no_rule_word(display)
        and not lowered.startswith(_EMAIL_RULE_HEADS)
        and not any(rule.account is not None and rule.account(user) for rule in _ACCOUNT_RULES)
    )


def _email_rule_matches(lowered: str) -> tuple[list[str], list[str]]:
    """The reasons of the rules whose address patterns match ``lowered``, and the patterns that matched."""
    reasons: list[str] = []
    email_globs: list[str] = []
    for rule_index, globs in _EMAIL_RULE_GLOBS:
        matching = [glob.pattern for glob in globs if glob.match(lowered)]
        if matching:
            reasons.append(f"{_RULES[rule_index].reason}: address matches {matching[0]!r}")
            email_globs.extend(matching)
    return reasons, email_globs


def _detect(user: DirectoryUser, email: str) -> _Finding | None:
    """Apply the rule table to one user with an email."""
    local = email.rpartition("@")[0]
    lowered = email.lower()
    display = user.display_name or ""
    if _plainly_a_person(user, local, display, lowered):
        return None
    local_words = _words(local)
    display_words = _words(display)
    own_names = frozenset(
        word for name in (user.given_name, user.surname) if name for word, _, _ in _words(name)
    )
    local_hits = _hits(local_words, own_names)
    display_hits = _hits(display_words, own_names)
    no_names = (
        not (user.given_name or "").strip()
        and not (user.surname or "").strip()
        and not any(word in _HONORIFICS for word, _, _ in display_words)
    )
    local_is_system = _only_system_words(local_words)
    display_is_system = _only_system_words(display_words)

    reasons, email_globs = _email_rule_matches(lowered)
    evidence: list[_Hit] = []
    used_no_names = False
    display_key = tuple(word for word, _, _ in display_words)
    for rule_index, rule in enumerate(_RULES):
        if rule.looks_at == "display name" and display_key in rule.display_names:
            reasons.append(f"{rule.reason}: display name {display!r}")
        elif rule.looks_at == "account" and rule.account is not None and rule.account(user):
            reasons.append(rule.reason)
        elif rule.looks_at == "words":
            mine = [hit for hit in local_hits if hit.rule_index == rule_index]
            in_display = [hit for hit in display_hits if hit.rule_index == rule_index]
            if not mine and not in_display:
                continue
            local_counts = bool(mine) and (
                any(hit.strong for hit in mine)
                or local_is_system
                or (no_names and bool(display_hits))
            )
            if local_counts and not any(hit.strong for hit in mine) and not local_is_system:
                used_no_names = True
            display_counts = bool(in_display) and no_names and (display_is_system or local_counts)
            if display_counts and not local_counts:
                used_no_names = True
            if local_counts or display_counts:
                reasons.append(
                    _describe(rule, local, display, mine if local_counts else [], in_display if display_counts else [])
                )
                if local_counts:
                    evidence.extend(mine)
    if not reasons:
        return None
    if used_no_names:
        reasons.append(_NO_NAMES_REASON)
    return _Finding(tuple(reasons), tuple(email_globs), tuple(evidence))


def _candidates(email: str, finding: _Finding) -> list[str]:
    """Globs for one flagged account, most general first; the last is always the exact address."""
    local = email.rpartition("@")[0]
    local_lower = local.lower()
    candidates = list(finding.email_globs)
    for hit in finding.local_hits:
        word = local[hit.start : hit.end].lower()
        before = local[hit.start - 1] if hit.start > 0 else ""
        after = local[hit.end] if hit.end < len(local) else ""
        if not before and not after:
            candidates.append(f"{word}@*")
        if hit.strong and len(word) >= _MIN_CONTAINS_LENGTH:
            candidates.append(f"*{word}*")
        if not before and after in _LOCAL_PART_SEPARATORS:
            candidates.append(f"{word}{after}*")
        if before in _LOCAL_PART_SEPARATORS and not after:
            candidates.append(f"*{before}{word}@*")
        if before in _LOCAL_PART_SEPARATORS and after in _LOCAL_PART_SEPARATORS:
            candidates.append(f"*{before}{word}{after}*")
    if finding.local_hits:
        candidates.append(f"{local_lower}@*")
    exact = email.lower()
    candidates.append(exact)
    # The exact address may hold characters no pattern may (quoted local
    # parts): "?" stands for each, and an over-long address keeps its start.
    sanitized = "".join("?" if character_problem(character) else character for character in exact)
    if len(sanitized) > MAX_PATTERN_LENGTH:
        sanitized = sanitized[: MAX_PATTERN_LENGTH - 1] + "*"
    candidates.append(sanitized)
    return list(dict.fromkeys(candidates))


class _Unflagged:
    """The lowered emails of the accounts not suggested, indexed to ask "does a glob match any?"."""

    def __init__(self, emails: Iterable[str]) -> None:
        self.exact = frozenset(emails)
        self.forward = sorted(self.exact)
        self._backward: list[str] | None = None
        self._joined: str | None = None

    @property
    def backward(self) -> list[str]:
        if self._backward is None:
            self._backward = sorted(email[::-1] for email in self.exact)
        return self._backward

    @property
    def joined(self) -> str:
        # Emails hold no whitespace (DirectoryUser.email guarantees it), so a
        # newline separates them safely for a substring scan.
        if self._joined is None:
            self._joined = "\n" + "\n".join(self.forward) + "\n"
        return self._joined

    def any_match(self, glob: Glob) -> bool:
        pattern = glob.pattern
        if "*" not in pattern and "?" not in pattern:
            return pattern in self.exact
        literals = WILDCARD_RUN.split(pattern)
        head, tail = literals[0], literals[-1]
        # Anchored globs only need the few emails that start (or end) right.
        if head:
            return any(glob.match(email) for email in _with_prefix(self.forward, head))
        if tail:
            return any(
                glob.match(reversed_email[::-1]) for reversed_email in _with_prefix(self.backward, tail[::-1])
            )
        literals = [piece for piece in literals if piece]
        if not literals:
            return any(glob.match(email) for email in self.forward)
        anchor = max(literals, key=len)
        joined = self.joined
        search_from = 0
        while (hit := joined.find(anchor, search_from)) >= 0:
            line_start = joined.rfind("\n", 0, hit) + 1
            line_end = joined.find("\n", hit)
            if glob.match(joined[line_start:line_end]):
                return True
            search_from = line_end
        return False


def _with_prefix(ordered: list[str], prefix: str) -> Iterable[str]:
    for position in range(bisect.bisect_left(ordered, prefix), len(ordered)):
        if not ordered[position].startswith(prefix):
            return
        yield ordered[position]


def suggest(users: Sequence[DirectoryUser]) -> Suggestions:
    """The accounts among ``users`` that look like no person, with a glob and reasons each.

    What :meth:`calm_azure_sync.ExclusionPolicy.suggest` returns; its
    docstring states the guarantees.
    """
    flagged: list[tuple[DirectoryUser, str, _Finding]] = []
    unflagged: list[str] = []
    seen: set[str] = set()
    for user in users:
        if user.id in seen:
            continue  # one user, listed twice: the first record speaks for it
        seen.add(user.id)
        email = user.email
        if email is None:
            continue  # no glob can name it: nothing to suggest, nothing to protect
        finding = _detect(user, email)
        if finding is None:
            unflagged.append(email.lower())
        else:
            flagged.append((user, email, finding))

    others = _Unflagged(unflagged)
    # Many accounts share a candidate (noreply@*): check each glob against the others once.
    globs: dict[str, Glob] = {}
    safe: dict[str, bool] = {}
    suggestions: list[ExclusionSuggestion] = []
    for user, email, finding in flagged:
        own = email.lower()
        for candidate in _candidates(email, finding):
            glob = globs.get(candidate)
            if glob is None:
                glob = globs[candidate] = Glob(candidate.lower())
                safe[candidate] = pattern_problem(candidate) is None and not others.any_match(glob)
            if safe[candidate] and glob.match(own):
                suggestions.append(ExclusionSuggestion(user.id, email, candidate, finding.reasons))
                break
    suggestions.sort(key=lambda suggestion: ((suggestion.email or "").lower(), suggestion.user_id))
    return Suggestions(suggestions)
