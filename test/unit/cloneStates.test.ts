/**
 * The clone state machine (issue 17 item 2): every valid move of the table, with what it
 * does to the record (operation started or ended, fracture and sync times); every other
 * move refused with a bug error that changes nothing; the table covers every state of
 * DESIGN §2 (as README's "Clone states" states it); and the group applies its moves through
 * it (an invalid move on an open group is refused before the record changes).
 */
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'
import {describe, test} from 'node:test'
import {ExitCode, InvalidTransitionError} from '../../src/errors/errors.js'
import {applyCloneEvent, CLONE_EVENTS, type CloneEvent, NEW_CLONE, nextCloneState, snapshotStates, TRANSITIONS} from '../../src/store/cloneStates.js'
import {CLONE_STATES, type CloneRecord, type CloneState, type GroupRecord, type OperationRecord} from '../../src/store/GroupRecord.js'
import {buildGroup, fillPattern, openGroup} from '../helpers/memGroup.js'

const STARTS = new Set<CloneEvent>(['sync-start', 'restore-start', 'reverse-sync-start'])
const ENDS = new Set<CloneEvent>(['sync-done', 'sync-stop', 'restore-done', 'reverse-sync-done'])

function records(state: CloneState, withOp: boolean): {group: GroupRecord; clone: CloneRecord} {
  const clone: CloneRecord = {
    name: 'c1',
    volume: {path: '/backup/c1.img', fingerprint: {kind: 'file', size: 1 << 20, dev: 1, ino: 2, mtimeMs: 1, ctimeMs: 1}},
    state,
    stateReason: 'before',
    mapFile: 'clone-c1.map',
    createdAt: '2026-01-01T00:00:00.000Z',
    lastFractureAt: '2026-01-01T00:00:00.000Z',
    lastSyncAt: '2026-01-01T00:00:00.000Z',
    trusted: true,
  }
  const group: GroupRecord = {
    formatVersion: 1,
    name: 'g',
    extentSize: 65536,
    createdAt: '2026-01-01T00:00:00.000Z',
    source: {path: '/srv/src.img', fingerprint: {kind: 'file', size: 1 << 20, dev: 1, ino: 1, mtimeMs: 1, ctimeMs: 1}},
    clones: [clone],
    ...(withOp ? {operation: operation('old')} : {}),
  } as GroupRecord
  return {group, clone}
}

function operation(id: string): OperationRecord {
  return {id, kind: 'sync', clone: 'c1', startedAt: '2026-01-02T00:00:00.000Z', command: 'test', pid: 1}
}

const validMoves = CLONE_EVENTS.flatMap((event) => Object.entries(TRANSITIONS[event]).map(([from, to]) => ({event, from: from as CloneState, to: to as CloneState})))

describe('the clone state machine', () => {
  test('every event has a row and every move of the table goes where it says', () => {
    assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...CLONE_EVENTS].sort())
    assert.ok(validMoves.length >= 20, `the table has ${validMoves.length} moves`)
  })

  for (const {event, from, to} of validMoves) {
    test(`valid: ${from} --${event}--> ${to}`, () => {
      const {group, clone} = records(from, ENDS.has(event))
      const at = '2026-03-04T05:06:07.000Z'
      const op = STARTS.has(event) ? operation('new') : undefined
      const reason = event === 'map-damaged' || event === 'verify-differs' ? 'why' : undefined
      assert.equal(applyCloneEvent(group, clone, event, {at, operation: op, reason}), to)
      assert.equal(clone.state, to)
      assert.equal(nextCloneState(from, event), to)
      assert.equal(clone.stateReason, reason)
      // The operation record moves with the state, in the same call.
      if (STARTS.has(event)) assert.equal(group.operation, op)
      else if (ENDS.has(event)) assert.equal(group.operation, undefined)
      else assert.equal(group.operation, undefined)
      assert.equal(clone.lastFractureAt, event === 'fracture' ? at : '2026-01-01T00:00:00.000Z')
      assert.equal(clone.lastSyncAt, event === 'sync-done' || event === 'reverse-sync-done' ? at : '2026-01-01T00:00:00.000Z')
    })
  }

  test('every move not in the table is refused with a bug error, and nothing changes', () => {
    let refused = 0
    for (const event of CLONE_EVENTS) {
      for (const from of CLONE_STATES) {
        if (TRANSITIONS[event][from] !== undefined) continue
        const {group, clone} = records(from, true)
        const before = structuredClone({group, clone})
        assert.throws(
          () => applyCloneEvent(group, clone, event, STARTS.has(event) ? {operation: operation('new')} : {}),
          (error: unknown) => error instanceof InvalidTransitionError && error.exitCode === ExitCode.bug && error.message.includes(from) && error.message.includes(event),
          `${from} --${event}--> must be refused`,
        )
        assert.deepEqual({group, clone}, before, `${from} --${event}--> changed the record`)
        refused++
      }
    }
    // The moves the engines never make: e.g. fracturing a clone being restored from.
    assert.ok(refused >= 30, `only ${refused} invalid moves`)
    assert.throws(() => nextCloneState('restoring', 'fracture'), InvalidTransitionError)
    assert.throws(() => nextCloneState('fractured', 'sync-done'), InvalidTransitionError)
    assert.throws(() => nextCloneState('reverse-syncing', 'sync-start'), InvalidTransitionError)
  })

  test('a start needs its operation record and no other move takes one', () => {
    const a = records('fractured', false)
    assert.throws(() => applyCloneEvent(a.group, a.clone, 'sync-start'), InvalidTransitionError)
    assert.equal(a.clone.state, 'fractured')
    const b = records('synchronized', false)
    assert.throws(() => applyCloneEvent(b.group, b.clone, 'fracture', {operation: operation('x')}), InvalidTransitionError)
    assert.equal(b.clone.state, 'synchronized')
    assert.equal(b.group.operation, undefined)
  })

  test('the table covers every state of DESIGN §2 (README "Clone states"): each is reached by a move and left by one', () => {
    const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8')
    const para = /^Clone states:[\s\S]*?\n\n/m.exec(readme)?.[0]
    assert.ok(para, 'README has its "Clone states:" paragraph')
    const documented = new Set([...para.matchAll(/`([a-z-]+)`/g)].map((m) => m[1]).filter((s) => s !== '--force' && !s.startsWith('--')))
    assert.deepEqual([...documented].sort(), [...CLONE_STATES].sort())
    assert.ok(CLONE_STATES.includes(NEW_CLONE.state))
    for (const s of CLONE_STATES) {
      assert.ok(s === NEW_CLONE.state || validMoves.some((m) => m.to === s && m.from !== s), `no move reaches ${s}`)
      assert.ok(validMoves.some((m) => m.from === s && m.to !== s), `no move leaves ${s}`)
    }
  })

  test('snapshotStates puts back the states, reasons, fracture times and operation of a start whose save failed', () => {
    const {group, clone} = records('fractured', false)
    const before = structuredClone({group, clone})
    const undo = snapshotStates([clone], group)
    applyCloneEvent(group, clone, 'restore-start', {operation: {...operation('r'), kind: 'restore'}})
    assert.equal(clone.state, 'restoring')
    undo()
    assert.deepEqual({group, clone}, before)
    // Without the group, the operation is left alone (a fracture does not own it).
    const r = records('synchronized', false)
    const undoFracture = snapshotStates([r.clone])
    applyCloneEvent(r.group, r.clone, 'fracture')
    r.group.operation = operation('other')
    undoFracture()
    assert.equal(r.clone.state, 'synchronized')
    assert.equal(r.clone.lastFractureAt, '2026-01-01T00:00:00.000Z')
    assert.equal(r.group.operation?.id, 'other')
  })
})

describe('the group moves its clones through the state machine', () => {
  test('given a fractured clone of an open group, when it is told its sync is done, then the move is refused and the record is unchanged', async () => {
    const m = await buildGroup({extents: 4, source: fillPattern(4, 4096, (e) => e + 1), clones: ['c1']})
    const g = await openGroup(m)
    try {
      const c = g.member('c1')
      assert.equal(c.state, 'fractured')
      const before = structuredClone(g.record)
      assert.throws(() => c.apply('sync-done'), InvalidTransitionError)
      assert.deepEqual(g.record, before)
      // A valid move records the operation on the group's record, in the same call.
      c.apply('sync-start', {operation: operation('s1')})
      assert.equal(c.state, 'synchronizing')
      assert.equal(g.record.operation?.id, 's1')
      c.apply('sync-stop', {reason: 'stopped'})
      assert.equal(c.state, 'out-of-sync')
      assert.equal(g.record.operation, undefined)
    } finally {
      await g.close({save: false})
    }
  })
})
