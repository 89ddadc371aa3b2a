"""One way to name a track, used by the camera pipeline and by the NATS matcher alike.

A track's evidence is the mean of its body embeddings and, when faces were seen, of its face embeddings. The
decision, through the gallery's public API only:

1. **Face first.** A face the gallery knows names the track; its body is linked to that person (enrolled as a
   body template unless the body already points there).
2. **Body otherwise.** ``identify_or_enroll`` on the body (a new anonymous person when nobody is close enough
   and enrolling is allowed, else ``identify``). A face seen on such a track joins the person it was given,
   unless that person has face templates already (they did not accept this face: it may be someone else's).
3. **Fragments create nobody.** A track that ended short (fewer than ``assign_after`` body views) and overlaps
   in time with a named track of the same camera is a piece of someone already in view: it may be named, never
   new.
4. **Two people in one frame are two people.** When two tracks of the same camera are seen at the same time
   (latest boxes at most ``apart_within`` frames apart), their boxes lie apart, and both are named the same person,
   only one of them is that person: the track that created the person keeps it, else one that has ended (its
   sightings are written), else a face match beats a body match, else the higher score wins; a fragment never
   takes it. The other is decided again with that person left out (another known person, a new one, or nobody
   when enrolling is off or it is a fragment), and is never named again, nor re-associated, as that person. A
   track whose box overlaps the other's is a piece of the same person (a split detection), not a rival.
5. **At the end of a long track** (``2 x assign_after`` views): if its first decision created a person, the
   whole-track embedding is matched again and the new person merged into a known one when the decision says so
   (re-association), never into a person it was seen side by side with (rule 4's evidence, kept per person);
   the whole-track body becomes another template of its person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from gallery import Gallery
from gallery.review import ReviewQueue, in_band, near_miss, offer_review

logger = logging.getLogger(__name__)


@dataclass
class TrackEvidence:
    """What one track saw, aggregated: mean unit embeddings and the models that made them."""

    key: str  # "<camera>:<track>", unique across cameras
    camera_id: str
    body: np.ndarray
    body_model_id: str
    views: int  # body embeddings in the mean
    first_frame: int
    last_frame: int
    face: np.ndarray | None = None
    face_model_id: str | None = None
    ended: bool = False  # the track is over: these are all the views it will ever have
    box: np.ndarray | None = None  # its latest box, xyxy in the frame (None: unknown, no two-people check)


@dataclass
class Assignment:
    person_id: int | None
    matched_by: str | None = None  # "face" or "body"
    score: float | None = None
    created: bool = False  # this track's decision created the person
    template_ids: list[int] = field(default_factory=list)  # templates this track enrolled


def mean_unit(vectors: list[np.ndarray]) -> np.ndarray:
    v = np.mean(vectors, axis=0)
    return (v / np.linalg.norm(v)).astype(np.float32)


def boxes_apart(a: np.ndarray | None, b: np.ndarray | None, overlap: float = 0.3) -> bool:
    """Two boxes (xyxy) that cannot hold the same person: their intersection covers less than ``overlap`` of
    the smaller one. A split detection (a head-and-shoulders box inside the whole person's) is not apart."""
    if a is None or b is None:
        return False
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, float(w)) * max(0.0, float(h))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter < overlap * max(float(smaller), 1e-9)


@dataclass
class _Claim:
    """A named track of one camera: its latest evidence and its current decision."""

    ev: TrackEvidence
    a: Assignment


class IdentityPolicy:
    def __init__(
        self,
        gallery: Gallery,
        *,
        enroll: bool = True,
        body_threshold: float | None = None,
        face_threshold: float | None = None,
        assign_after: int = 4,
        reassociate: bool = True,
        track_templates: bool = True,
        review_band: float = 0.05,
        apart_within: int = 3,
    ) -> None:
        self.gallery, self.enroll = gallery, enroll
        # two tracks' boxes are compared only when they were seen at most this many frames apart (a box from
        # another moment says nothing about where the other person stands now)
        self.apart_within = apart_within
        # near misses (a new person just under the threshold of a known one) go to the operators' review queue
        self.review, self.review_band = ReviewQueue(gallery.Session), review_band
        self.body_threshold, self.face_threshold = body_threshold, face_threshold
        self.assign_after, self.reassociate, self.track_templates = assign_after, reassociate, track_templates
        self._named: dict[str, dict[str, _Claim]] = {}  # camera -> named track key -> its claim
        self._apart: dict[str, set[int]] = {}  # track key -> persons it was seen beside, so cannot be
        # person -> persons seen side by side with it (two named tracks of one camera in view together, boxes
        # apart): two people, so a whole-track re-association never merges one into the other
        self._together: dict[int, set[int]] = {}
        self._renamed: dict[str, Assignment] = {}  # decisions of live tracks changed since the last take

    # ------------------------------------------------------------------------------------ fragments
    def seen(self, ev: TrackEvidence) -> None:
        """A named track was seen again (call as its evidence arrives)."""
        claim = self._named.get(ev.camera_id, {}).get(ev.key)
        if claim is not None:
            ev.first_frame = min(ev.first_frame, claim.ev.first_frame)
            claim.ev = ev
            self._note_together(claim)

    def moved(self, camera_id: str, key: str, frame: int, box: np.ndarray) -> None:
        """A named track's box in ``frame`` (call every frame it is matched in, so boxes compare at one time)."""
        claim = self._named.get(camera_id, {}).get(key)
        # an older box (from a redelivered event) says nothing about where the track stands now
        if claim is not None and frame >= claim.ev.last_frame:
            claim.ev.last_frame, claim.ev.box = frame, box
            self._note_together(claim)

    def together(self, person_id: int) -> set[int]:
        """The persons seen side by side with ``person_id`` in some camera (so not the same person)."""
        return set(self._together.get(person_id, ()))

    def _note_together(self, claim: _Claim) -> None:
        pid = claim.a.person_id
        if pid is None:
            return
        for other in self._beside(claim.ev):
            q = other.a.person_id
            if q is not None and q != pid:
                self._together.setdefault(pid, set()).add(q)
                self._together.setdefault(q, set()).add(pid)

    def fragment_of(self, ev: TrackEvidence) -> str | None:
        """The named track of the same camera a short, ended track overlaps in time, if any."""
        if not self._fragment(ev):
            return None
        for key, c in self._named.get(ev.camera_id, {}).items():
            if key != ev.key and _overlap(c.ev, ev):
                return key
        return None

    def forget_before(self, camera_id: str, frame: int) -> None:
        """Named tracks that ended before ``frame`` (the first frame of every live track) can overlap no
        fragment to come."""
        named = self._named.get(camera_id, {})
        for key in [k for k, c in named.items() if c.ev.last_frame < frame]:
            del named[key]
            self._apart.pop(key, None)

    def forget_camera(self, camera_id: str) -> None:
        """Everything remembered about a camera's tracks (its frame numbers start again: a restarted worker)."""
        for key in self._named.pop(camera_id, {}):
            self._apart.pop(key, None)

    def take_renamed(self) -> dict[str, Assignment]:
        """Live tracks whose decision changed because another track proved them someone else (rule 4), by
        track key; the caller updates what it shows and records for them."""
        out, self._renamed = self._renamed, {}
        return out

    # ------------------------------------------------------------------------------------ two people
    def _beside(self, ev: TrackEvidence) -> list[_Claim]:
        """Named tracks of ``ev``'s camera seen at the same time as it (last boxes at most ``apart_within``
        frames apart), with a box apart from its."""
        return [
            c
            for key, c in self._named.get(ev.camera_id, {}).items()
            if key != ev.key
            and abs(c.ev.last_frame - ev.last_frame) <= self.apart_within
            and boxes_apart(c.ev.box, ev.box)
        ]

    def _not_them(self, ev: TrackEvidence) -> set[int]:
        """Persons this track cannot be: those it was seen beside, and those of the named tracks beside it now."""
        return self._apart.get(ev.key, set()) | {c.a.person_id for c in self._beside(ev)}

    def _seen_beside(self, ev: TrackEvidence, candidate) -> bool:
        """Whether ``candidate`` (a match) is a person this track cannot be: two people, so not a pair to offer an
        operator for merging."""
        return candidate is not None and candidate.person_id in self._not_them(ev)

    def _fragment(self, ev: TrackEvidence) -> bool:
        return ev.ended and ev.views < self.assign_after

    def _keeps(self, holder: _Claim, challenger: TrackEvidence, a: Assignment) -> bool:
        """Whether the track holding a person keeps it against a concurrent track named the same."""
        h = holder.a
        if h.created or holder.ev.ended or self._fragment(challenger):
            # its templates are its own views / its sightings are written / a fragment never evicts anyone
            return True
        if h.matched_by != a.matched_by:
            return h.matched_by == "face"
        return (h.score or 0.0) >= (a.score or 0.0)

    def _settle(self, ev: TrackEvidence, a: Assignment, may_create: bool) -> Assignment:
        """Rule 4 for a track just named ``a``: if a track beside it holds the same person, one of them is
        decided again without that person (the other is live and long: a renamed track is never a fragment)."""
        rival = next((c for c in self._beside(ev) if c.a.person_id == a.person_id), None)
        if rival is None:
            return a
        pid = a.person_id
        if self._keeps(rival, ev, a):
            logger.info(
                "track %s is beside track %s, which is person %d (score %s): deciding again without them",
                ev.key, rival.ev.key, pid, rival.a.score,
            )  # fmt: skip
            self._apart.setdefault(ev.key, set()).add(pid)
            _warn_templates_left(ev.key, a, pid, rival.ev.key)
            return self._redecide(ev, may_create)
        logger.info(
            "track %s is person %d (%s %.3f); track %s beside it was named so too (%s %s): deciding it again",
            ev.key, pid, a.matched_by, a.score or 0.0, rival.ev.key, rival.a.matched_by, rival.a.score,
        )  # fmt: skip
        self._apart.setdefault(rival.ev.key, set()).add(pid)
        _warn_templates_left(rival.ev.key, rival.a, pid, ev.key)
        rival.a = self._redecide(rival.ev, self.enroll)
        self._renamed[rival.ev.key] = rival.a
        self._note_together(rival)
        if rival.a.person_id is None:  # nobody now (enrolling is off): no longer a named track
            del self._named[ev.camera_id][rival.ev.key]
        return a

    def _redecide(self, ev: TrackEvidence, may_create: bool) -> Assignment:
        """The body decision without the persons this track was seen beside: the best other known person,
        else a new one (``may_create``), else nobody."""
        excluded = self._not_them(ev)
        r = self._identify(ev, "body", k=_k_beyond(excluded))
        others = [m for m in r.matches if m.person_id not in excluded]
        v = None
        if others:
            v = self.gallery.decide(
                "body", ev.body_model_id, ev.body, [m.score for m in others], threshold=self.body_threshold
            )
        best = float(others[0].score) if others else None
        if v is not None and v.known:
            return Assignment(others[0].person_id, "body", best)
        if not may_create:
            return Assignment(None, "body", best)
        e = self.gallery.enroll(
            None, embeddings=ev.body[None], modality="body", model_id=ev.body_model_id, kind="anonymous",
            sources=[f"camera:{ev.camera_id}"],
        )  # fmt: skip
        return Assignment(e.person_id, "body", best, created=True, template_ids=list(e.template_ids))

    # ------------------------------------------------------------------------------------ decisions
    def assign(self, ev: TrackEvidence) -> Assignment:
        """The track's first decision: face when the gallery knows it, else body."""
        fragment = self.fragment_of(ev)
        may_create = self.enroll and fragment is None
        a = self._by_face(ev)
        face_named = a is not None
        if a is None:
            a = self._by_body(ev, may_create)
        if a.person_id is not None and a.person_id in self._apart.get(ev.key, ()):
            a = self._redecide(ev, may_create)  # seen beside that person before: never them
        if a.person_id is not None:
            a = self._settle(ev, a, may_create)
        if a.person_id is None and ev.ended:
            self._apart.pop(ev.key, None)
        if a.person_id is not None:
            claim = self._named.setdefault(ev.camera_id, {})[ev.key] = _Claim(ev, a)
            self._note_together(claim)
            if a.matched_by == "face" and self.enroll:
                self._link_body(a, ev)  # this body appearance belongs to the person the face named
            elif ev.face is not None and not face_named and self.enroll:
                self._adopt_face(a, ev)
        elif fragment is not None:
            logger.info(
                "track %s (%d views, frames %d-%d) is a fragment beside named track %s: no new person",
                ev.key, ev.views, ev.first_frame, ev.last_frame, fragment,
            )  # fmt: skip
        return a

    def _identify(self, ev: TrackEvidence, modality: str, k: int = 1):
        face = modality == "face"
        return self.gallery.identify(
            embedding=ev.face if face else ev.body,
            modality=modality,
            model_id=ev.face_model_id if face else ev.body_model_id,
            k=k,
            threshold=self.face_threshold if face else self.body_threshold,
        )

    def _add(self, a: Assignment, ev: TrackEvidence, modality: str, source: str) -> None:
        """One more template of ``a``'s person from this track (its mean face or body)."""
        face = modality == "face"
        e = self.gallery.enroll(
            a.person_id,
            embeddings=(ev.face if face else ev.body)[None],
            modality=modality,
            model_id=ev.face_model_id if face else ev.body_model_id,
            sources=[source],
        )
        a.template_ids += e.template_ids

    def _by_face(self, ev: TrackEvidence) -> Assignment | None:
        if ev.face is None:
            return None
        r = self._identify(ev, "face")
        if not r.known:
            return None
        return Assignment(r.best.person_id, "face", float(r.best.score))

    def _adopt_face(self, a: Assignment, ev: TrackEvidence) -> None:
        """A face the gallery does not know joins the person the body named, unless that person has faces of
        this model already: those did not accept this one, so it may be someone else's (and a poor view of
        the same person would only blur their face templates)."""
        theirs = [
            t.id
            for t in self.gallery.templates(a.person_id)
            if t.modality == "face" and t.model_id == ev.face_model_id
        ]
        if theirs:
            logger.info(
                "track %s: named person %d by body, but its face does not match their face templates %s: "
                "the face is not added to them", ev.key, a.person_id, theirs,
            )  # fmt: skip
            return
        self._add(a, ev, "face", f"camera:{ev.camera_id}")

    def _link_body(self, a: Assignment, ev: TrackEvidence) -> None:
        """A body template for the person a face named, unless the body already names them."""
        b = self._identify(ev, "body")
        if not (b.known and b.best.person_id == a.person_id):
            self._add(a, ev, "body", f"camera:{ev.camera_id}")

    def _by_body(self, ev: TrackEvidence, may_create: bool) -> Assignment:
        if not may_create:
            r = self._identify(ev, "body")
            return Assignment(r.best.person_id if r.known else None, "body", r.best.score if r.best else None)
        r = self.gallery.identify_or_enroll(
            embedding=ev.body, modality="body", model_id=ev.body_model_id, threshold=self.body_threshold
        )
        a = Assignment(r.person_id, "body", r.score, created=r.created)
        if r.enroll is not None:
            a.template_ids += r.enroll.template_ids
        if (
            r.created
            and near_miss(r.identify, self.review_band)
            and not self._seen_beside(ev, r.identify.best)
        ):
            offer_review(
                self.review, r.person_id, r.identify, "body", ev.body_model_id, f"camera:{ev.camera_id}"
            )
        return a

    def finish(self, ev: TrackEvidence, a: Assignment) -> Assignment:
        """At the end of a named track: re-association and the whole-track template (long tracks only)."""
        claim = self._named.get(ev.camera_id, {}).get(ev.key)
        if claim is not None:
            claim.ev = ev
            if a.score is None:  # the caller may not carry it: the claim's stands
                a.score = claim.a.score
        if a.person_id is not None and ev.views >= 2 * self.assign_after:
            if self.reassociate and a.created:
                self._reassociate(ev, a)
            if self.track_templates and self.enroll and a.matched_by == "body":
                self._add(a, ev, "body", f"camera:{ev.camera_id}:track:{ev.key.rsplit(':', 1)[-1]}")
        if claim is not None:
            claim.a = a
        return a

    def _reassociate(self, ev: TrackEvidence, a: Assignment) -> None:
        """Whole-track match of a track that created its person early; merge that person into a known one."""
        g, mine = self.gallery, a.person_id
        apart = self._apart.get(ev.key, set()) | self._together.get(mine, set())
        r = self._identify(ev, "body", k=_k_beyond(apart))
        others = [m for m in r.matches if m.person_id != mine and m.person_id not in apart]
        if not others:
            return
        # the same decision as identify's, with this track's own person left out of the candidates
        v = g.decide(
            "body", ev.body_model_id, ev.body, [m.score for m in others], threshold=self.body_threshold
        )
        if v is None:
            return
        if not v.known:
            if in_band(v.normalised, v.threshold, self.review_band):
                self.review.offer(
                    mine, others[0].person_id, score=others[0].score, normalised=v.normalised,
                    threshold=v.threshold, modality="body", model_id=ev.body_model_id, source=f"camera:{ev.camera_id}",
                )  # fmt: skip
            return
        if g.template_ids(mine) - set(a.template_ids):
            return  # someone else's observations joined this person meanwhile: leave it to staff to merge
        other = others[0]
        logger.info(
            "track %s: person %d is known person %d (whole-track score %.3f); merging",
            ev.key, mine, other.person_id, other.score,
        )  # fmt: skip
        g.merge(other.person_id, mine)
        for q in self._together.pop(mine, set()):  # whom ``mine`` was seen beside, the merged person was
            self._together[q].discard(mine)
            self._together[q].add(other.person_id)
            self._together.setdefault(other.person_id, set()).add(q)
        a.person_id, a.score, a.created = other.person_id, float(other.score), False


def _k_beyond(excluded: set[int]) -> int:
    """Persons to ask for when ``excluded`` may fill the top: 3 beyond them, at most 50 in all (past that the
    track is decided among fewer candidates: at worst nobody, the safe side)."""
    return 3 + min(len(excluded), 47)


def _warn_templates_left(key: str, a: Assignment, pid: int, beside: str) -> None:
    """A track proved not to be ``pid`` (seen beside track ``beside``) may have enrolled into them already."""
    if a.template_ids:
        logger.warning(
            "track %s enrolled templates %s into person %d before track %s proved it someone else; they stay "
            "there (review that person)", key, a.template_ids, pid, beside,
        )  # fmt: skip


def _overlap(a: TrackEvidence, b: TrackEvidence) -> bool:
    return a.first_frame <= b.last_frame and b.first_frame <= a.last_frame
