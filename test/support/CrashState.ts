/**
 * Crash choices: which of a MemoryFs's pending operations land when the power fails, and
 * the enumeration of the crash states a power-loss test checks (DESIGN §7). Pure functions
 * of the pending list; MemoryFs.crash() applies them. Everything here is deterministic: a
 * choice is plain data (JSON-printable) and replays to the same state.
 */

import {mulberry32} from '../../src/io/prng.js'

/** Size of the unit a torn write is cut at. */
export type TearUnit = 512 | 4096

/**
 * One pending write lands only in part: the first `units` whole `at`-byte units it touches
 * (counted on the device, so a write that starts mid-unit lands the rest of that unit first;
 * a unit is never smaller than the fs's sector, so a sector is never split). Without `units`
 * the count is drawn at random (deterministically, from the index, `at` and a subset's seed)
 * among the proper cuts, so the write neither lands whole nor vanishes when it can be cut.
 * The torn write lands torn even when the base choice would not land it.
 */
export interface TornChoice {
  index: number
  at: TearUnit
  units?: number
}

export type CrashChoice = (
  | {kind: 'durable'} // only what is durable
  | {kind: 'all'} // every pending op lands (equals the volatile state)
  | {kind: 'subset'; seed: number} // each pending op independently lands or not (p = 1/2)
  | {kind: 'all-but-one'; index: number} // every pending op but the index-th (global order)
  | {kind: 'prefix'; count: number} // the first `count` pending ops in global order
) & {torn?: TornChoice}

/** A pending (not yet durable) operation, as MemoryFs.pendingOps() describes it. */
export interface PendingOp {
  /** Position in the global order of pending ops: what choices' indices refer to. */
  index: number
  kind: 'write' | 'punch' | 'truncate' | 'create' | 'unlink' | 'rename' | 'mkdir'
  /** The file's path when the op was issued (for a rename, its old name). */
  path: string
  offset?: number
  length?: number
  /** A rename's new name. */
  to?: string
}

/** Which of n pending ops (global order) land under `choice`, ignoring its torn write. */
export function landing(n: number, choice: CrashChoice): boolean[] {
  const lands = new Array<boolean>(n).fill(false)
  switch (choice.kind) {
    case 'durable':
      break
    case 'all':
      lands.fill(true)
      break
    case 'prefix':
      lands.fill(true, 0, Math.max(0, Math.min(n, choice.count)))
      break
    case 'all-but-one':
      lands.fill(true)
      if (choice.index >= 0 && choice.index < n) lands[choice.index] = false
      break
    case 'subset': {
      const r = mulberry32(choice.seed)
      for (let i = 0; i < n; i++) lands[i] = r() < 0.5
      break
    }
  }
  return lands
}

/** The cut unit: `at`, but never less than a sector (powers of two, so the larger is a multiple). */
export function tearUnit(at: TearUnit, sectorSize: number): number {
  return Math.max(at, sectorSize)
}

/** How many `unit`-byte device units a write of `length` bytes at `offset` touches. */
export function unitsTouched(offset: number, length: number, unit: number): number {
  if (length <= 0) return 0
  return Math.ceil((offset + length) / unit) - Math.floor(offset / unit)
}

/**
 * Bytes of a write (from its start) that land when it is torn per `torn`: the data up to the
 * end of its `units`-th device unit. With `units` unset, a deterministic random count among
 * the proper cuts (1 .. touched-1), or the whole write when it lies inside one unit.
 */
export function tornLength(offset: number, length: number, torn: TornChoice, sectorSize: number, salt = 0): number {
  const unit = tearUnit(torn.at, sectorSize)
  const touched = unitsTouched(offset, length, unit)
  let units: number
  if (torn.units !== undefined) units = Math.max(0, Math.min(touched, Math.floor(torn.units)))
  else if (touched <= 1) units = touched
  else {
    const r = mulberry32((Math.imul(torn.index + 1, 0x9e3779b1) ^ Math.imul(torn.at, 0x85ebca6b) ^ salt) >>> 0)
    units = 1 + Math.floor(r() * (touched - 1))
  }
  const cut = (Math.floor(offset / unit) + units) * unit
  return Math.max(0, Math.min(length, cut - offset))
}

/** The state space enumerateCrashStates walks, as MemoryFs exposes it. */
export interface CrashSource {
  pendingCount(): number
  pendingOps(): PendingOp[]
  readonly sectorSize: number
}

/** Default cap on the states one enumerateCrashStates call yields. */
export const MAX_CRASH_STATES = 200

/** Indices 0..n-1, or `k` of them spread evenly (first and last included) when n > k. */
function spread(n: number, k: number): number[] {
  if (k <= 0 || n <= 0) return []
  if (n <= k) return Array.from({length: n}, (_, i) => i)
  if (k === 1) return [0]
  const out: number[] = []
  for (let j = 0; j < k; j++) {
    const i = Math.round((j * (n - 1)) / (k - 1))
    if (out.at(-1) !== i) out.push(i)
  }
  return out
}

/** Share `budget` among groups of the given sizes: equal shares, what one cannot use goes to the others. */
function share(budget: number, sizes: number[]): number[] {
  const got = sizes.map(() => 0)
  let left = budget
  let open = sizes.map((_, i) => i).filter((i) => sizes[i] > 0)
  while (left > 0 && open.length > 0) {
    const each = Math.max(1, Math.floor(left / open.length))
    for (const i of open) {
      const take = Math.min(each, sizes[i] - got[i], left)
      got[i] += take
      left -= take
    }
    open = open.filter((i) => got[i] < sizes[i])
  }
  return got
}

function describe(op: PendingOp): string {
  switch (op.kind) {
    case 'write':
      return `write ${op.path} @${op.offset}+${op.length}`
    case 'truncate':
      return `truncate ${op.path} to ${op.length}`
    case 'rename':
      return `rename ${op.path} -> ${op.to}`
    default:
      return `${op.kind} ${op.path}`
  }
}

/**
 * The crash states of `fs` as it is now, in this order: durable; all; every prefix 1..n-1
 * (prefix 0 is `durable`, prefix n is `all`); every all-but-one; `subsets` random subsets
 * (seeds derived from `seed`); and with `torn`, for each pending write that crosses a sector
 * boundary (every write longer than a sector does), one torn variant: cut at 512 bytes, or
 * at 4096 when it crosses a 4096 boundary and a coin says so, landing a random proper prefix
 * of its units, after every op before it (mostly) or after all the others.
 *
 * Cap: at most `max` states (default MAX_CRASH_STATES = 200, never fewer than 2) per call.
 * durable and all always come first; subsets take up to what is left; the rest is shared
 * evenly among prefixes, all-but-one and torn writes, each sampled evenly over the pending
 * list (first and last always included) when it does not fit. Deterministic for a given fs
 * state and options. Yields only `durable` when nothing is pending.
 */
export function* enumerateCrashStates(
  fs: CrashSource,
  o: {subsets: number; seed: number; torn: boolean; max?: number},
): Generator<{choice: CrashChoice; label: string}> {
  const ops = fs.pendingOps()
  const n = ops.length
  const max = Math.max(2, Math.floor(o.max ?? MAX_CRASH_STATES))
  yield {choice: {kind: 'durable'}, label: 'durable'}
  if (n === 0) return
  yield {choice: {kind: 'all'}, label: 'all'}
  const tearable = o.torn ? ops.filter((op) => op.kind === 'write' && unitsTouched(op.offset ?? 0, op.length ?? 0, tearUnit(512, fs.sectorSize)) > 1) : []
  const subsets = Math.max(0, Math.min(Math.floor(o.subsets), max - 2))
  const [nPrefix, nAbo, nTorn] = share(max - 2 - subsets, [n - 1, n, tearable.length])
  for (const i of spread(n - 1, nPrefix)) yield {choice: {kind: 'prefix', count: i + 1}, label: `prefix ${i + 1}/${n}`}
  for (const i of spread(n, nAbo)) yield {choice: {kind: 'all-but-one', index: i}, label: `all but #${i}/${n} (${describe(ops[i])})`}
  for (let s = 0; s < subsets; s++) {
    const seed = (Math.imul(o.seed, 1000003) + s) >>> 0
    yield {choice: {kind: 'subset', seed}, label: `subset seed ${seed}`}
  }
  const r = mulberry32((o.seed ^ 0x5bd1e995) >>> 0)
  for (const k of spread(tearable.length, nTorn)) {
    const op = tearable[k]
    const offset = op.offset ?? 0
    const length = op.length ?? 0
    const big = unitsTouched(offset, length, tearUnit(4096, fs.sectorSize)) > 1
    const at: TearUnit = big && r() < 0.5 ? 4096 : 512
    const touched = unitsTouched(offset, length, tearUnit(at, fs.sectorSize))
    const units = 1 + Math.floor(r() * (touched - 1))
    const afterAll = r() < 0.25
    const torn: TornChoice = {index: op.index, at, units}
    const landed = tornLength(offset, length, torn, fs.sectorSize)
    const label = `torn #${op.index} (${describe(op)}) at ${at}: first ${landed} bytes, ${afterAll ? 'all others landed' : `after prefix ${op.index}`}`
    yield {choice: afterAll ? {kind: 'all', torn} : {kind: 'prefix', count: op.index, torn}, label}
  }
}
