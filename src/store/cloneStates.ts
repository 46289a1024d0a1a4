/**
 * The clone state machine (DESIGN §2): the one place a clone's state changes. Every valid
 * move is a row of TRANSITIONS (from-state × event → to-state); applyCloneEvent applies one,
 * together with what the move means for the record (the operation it starts or ends, the
 * fracture and sync times), and refuses any other with an InvalidTransitionError (a bug).
 *
 * It lives beside the records it changes (under both the engines and the group model), so
 * the engines apply moves without importing the group.
 */
import {InvalidTransitionError} from '../errors/errors.js'
import type {CloneRecord, CloneState, GroupRecord, OperationRecord} from './GroupRecord.js'

/** A clone when it is added: every extent to copy, not a copy until its first sync. */
export const NEW_CLONE: {readonly state: CloneState; readonly stateReason: string} = {state: 'out-of-sync', stateReason: 'never synchronized'}

export type CloneEvent =
  /** A forward sync (source → clone) is recorded. */
  | 'sync-start'
  /** The sync copied everything with no host write in flight: the clone is mirrored. */
  | 'sync-done'
  /** The sync stopped part-way (stopped, failed, or found recorded by a dead process). */
  | 'sync-stop'
  /** Mirroring stops: by request, before a restore, or because the clone failed (with a reason). */
  | 'fracture'
  /** A protected restore from this clone is recorded. */
  | 'restore-start'
  /** An unprotected reverse sync from this clone is recorded. */
  | 'reverse-sync-start'
  /** The protected restore ended: the clone, untouched, is a point-in-time copy again. */
  | 'restore-done'
  /** The reverse sync ended: source and clone are equal and mirrored. */
  | 'reverse-sync-done'
  /** The clone's map was damaged: a mirrored clone is no longer a copy anyone may count on. */
  | 'map-damaged'
  /** verify --repair found differences in a mirrored clone. */
  | 'verify-differs'

export const CLONE_EVENTS: readonly CloneEvent[] = ['sync-start', 'sync-done', 'sync-stop', 'fracture', 'restore-start', 'reverse-sync-start', 'restore-done', 'reverse-sync-done', 'map-damaged', 'verify-differs']

/** Where a restore may start from: any clone not already restored from (out-of-sync and synchronizing only with --force, checked by the restore). */
const restorable = ['synchronized', 'fractured', 'out-of-sync', 'synchronizing'] as const

/** The valid moves: TRANSITIONS[event][from] is the state after; a missing entry is an invalid move. */
export const TRANSITIONS: {readonly [E in CloneEvent]: Partial<Record<CloneState, CloneState>>} = {
  // Any clone not being restored from may be synced, an interrupted sync included.
  'sync-start': {synchronized: 'synchronizing', synchronizing: 'synchronizing', fractured: 'synchronizing', 'out-of-sync': 'synchronizing'},
  'sync-done': {synchronizing: 'synchronized'},
  // out-of-sync: a damaged map already took the clone out of its sync at open.
  'sync-stop': {synchronizing: 'out-of-sync', 'out-of-sync': 'out-of-sync'},
  fracture: {synchronized: 'fractured'},
  'restore-start': Object.fromEntries(restorable.map((s) => [s, 'restoring'])),
  'reverse-sync-start': Object.fromEntries(restorable.map((s) => [s, 'reverse-syncing'])),
  'restore-done': {restoring: 'fractured'},
  'reverse-sync-done': {'reverse-syncing': 'synchronized'},
  // Other states keep their meaning with every extent to copy (CloneGroup.noteDamagedMap).
  'map-damaged': {synchronized: 'out-of-sync', synchronizing: 'out-of-sync', fractured: 'fractured', 'out-of-sync': 'out-of-sync', restoring: 'restoring', 'reverse-syncing': 'reverse-syncing'},
  'verify-differs': {synchronized: 'out-of-sync'},
}

/** Events that record an operation in group.json, and those that end it. */
const STARTS: ReadonlySet<CloneEvent> = new Set(['sync-start', 'restore-start', 'reverse-sync-start'])
const ENDS: ReadonlySet<CloneEvent> = new Set(['sync-done', 'sync-stop', 'restore-done', 'reverse-sync-done'])

/** The state after `event` from `from`; an InvalidTransitionError when the table has no such move. */
export function nextCloneState(from: CloneState, event: CloneEvent, clone = 'the clone'): CloneState {
  const to = TRANSITIONS[event][from]
  if (to === undefined) throw new InvalidTransitionError(`clone ${clone} cannot go from ${from} on ${event}: not a move of the clone state machine`)
  return to
}

export interface MoveOptions {
  /** Why the clone is in its new state (status shows it); cleared when not given. */
  reason?: string
  /** The operation a start event records (required by them, refused by the others). */
  operation?: OperationRecord
  /** The time to stamp (lastFractureAt, lastSyncAt); now when not given. */
  at?: string
}

/**
 * Apply `event` to clone `clone` of group `group`, in memory: its state and reason, the
 * operation started or ended, and the time of a fracture or of a completed sync. Validated
 * whole before anything changes. Returns the new state. Does not save.
 */
export function applyCloneEvent(group: GroupRecord, clone: CloneRecord, event: CloneEvent, opts: MoveOptions = {}): CloneState {
  const to = nextCloneState(clone.state, event, clone.name)
  if (STARTS.has(event) !== (opts.operation !== undefined))
    throw new InvalidTransitionError(`clone ${clone.name}: ${event} ${STARTS.has(event) ? 'needs' : 'takes no'} operation record`)
  const at = opts.at ?? new Date().toISOString()
  if (event === 'fracture') clone.lastFractureAt = at
  if (event === 'sync-done' || event === 'reverse-sync-done') clone.lastSyncAt = at
  clone.state = to
  if (opts.reason) clone.stateReason = opts.reason
  else delete clone.stateReason
  if (opts.operation) group.operation = opts.operation
  if (ENDS.has(event)) delete group.operation
  return to
}

/**
 * A recorded operation whose clone is gone from the group (a damaged record): dropped with
 * no state to move. Does not save.
 */
export function dropOperation(group: GroupRecord): void {
  delete group.operation
}

/**
 * What a start changes in the records (every given clone's state, reason and fracture time,
 * and the group's operation when `group` is given); the returned function puts it back. Not
 * a move: it undoes moves whose save failed, so memory agrees with group.json again. Does
 * not wait.
 */
export function snapshotStates(clones: CloneRecord[], group?: GroupRecord): () => void {
  const operation = group?.operation
  const saved = clones.map((c) => ({c, state: c.state, stateReason: c.stateReason, lastFractureAt: c.lastFractureAt}))
  return () => {
    if (group) {
      if (operation) group.operation = operation
      else delete group.operation
    }
    for (const s of saved) {
      s.c.state = s.state
      for (const k of ['stateReason', 'lastFractureAt'] as const) {
        if (s[k] === undefined) delete s.c[k]
        else s.c[k] = s[k]
      }
    }
  }
}
