/**
 * What `--json` prints: one public result type per command, and the one place where on-disk
 * and internal records (group.json's GroupRecord and CloneRecord, engine summaries, a
 * server's status) become those results. Each mapper picks its fields by name and never
 * spreads a record, so a field added to group.json or to an engine type stays internal until
 * it is added here and to the command's schema (schemas.ts, shipped as schemas/*.schema.json).
 * That schema is the contract with scripts; a test runs every command against it.
 */
import type {JobInfo} from '../../group/JobControl.js'
import type {SyncSummary} from '../../engine/ForwardSync.js'
import type {RestoreSummary} from '../../engine/Restore.js'
import type {DrillReport} from '../../group/Drill.js'
import type {FractureResult} from '../../group/GroupAdmin.js'
import type {ProgressEvent} from '../../group/GroupOperations.js'
import type {CloneStatus, GroupStatus, OperationStatus} from '../../group/GroupStatus.js'
import type {VerifyReport} from '../../group/Verify.js'
import type {CloneRecord, CloneState, GroupRecord, UntrustedReason, VolumeRecord} from '../../store/GroupRecord.js'
import type {DamagedGroupReport} from '../../store/GroupStore.js'
import type {VolumeKind} from '../../volume/Volume.js'

export interface VolumeResult {
  path: string
  kind: VolumeKind
  size: number
}

export interface GroupCreateResult {
  name: string
  extentSize: number
  createdAt: string
  source: VolumeResult
}

export interface CloneResult {
  name: string
  path: string
  kind: VolumeKind
  size: number
  state: CloneState
  stateReason?: string
  createdAt: string
  lastSyncAt?: string
  lastFractureAt?: string
  trusted: boolean
  untrustedReason?: UntrustedReason
}

export interface SyncResult {
  clone: string
  /** Absent when nothing ran (the clone was already synchronized). */
  operationId?: string
  completed: boolean
  alreadySynchronized: boolean
  compared: boolean
  totalExtents: number
  copiedBytes: number
  skippedBytes: number
  collisions: number
  elapsedMs: number
}

export interface CloneAddResult {
  clone: CloneResult
  sync?: SyncResult
}

export interface FractureEntry {
  clone: string
  state: string
  alreadyFractured: boolean
  fracturedAt?: string
}
export type CloneFractureResult = FractureEntry[]

export interface CloneRemoveResult {
  clone: string
  path: string
}

export interface GroupDestroyResult {
  group: string
  clones: number
}

/** A group whose group.json cannot be read or trusted (group list, status). */
export interface DamagedGroupResult {
  name: string
  damaged: {file: string; reason: string; code: string; fix?: string}
}

export interface GroupListEntry {
  name: string
  source: string
  size: number
  clones: number
  /** "KIND STATE", e.g. "restore interrupted". */
  operation?: string
}
export type GroupListResult = Array<GroupListEntry | DamagedGroupResult>

export interface CloneStatusResult {
  name: string
  path: string
  state: CloneState
  stateReason?: string
  dirtyExtents: number
  dirtyBytes: number
  inSyncPercent: number
  trusted: boolean
  damagedMapPages?: number[]
  mapDamage?: string
  lastSyncAt?: string
  lastFractureAt?: string
  /** Why its volume cannot be used now (missing, unreadable, not a volume); the recorded state is then history. */
  unavailable?: string
}

export interface OperationStatusResult {
  id: string
  kind: 'sync' | 'restore'
  clone: string
  protected?: boolean
  startedAt: string
  state: 'running' | 'interrupted'
  pid: number
  totalExtents?: number
  remainingExtents: number
  percentDone: number
  hostWrittenExtents?: number
  /** Set when the process running the job answered: paused by `clonectl job pause`, and its rate in bytes/s (absent: unlimited). */
  paused?: boolean
  rate?: number
}

/** A running operation's progress, as a serving process reports it. */
export interface ProgressResult {
  operation: 'sync' | 'restore' | 'verify'
  clone: string
  totalBytes: number
  doneBytes: number
  remainingExtents: number
  codCopies?: number
  paused?: boolean
  /** Bytes per second; absent when unlimited. */
  rate?: number
}

export interface ServerResult {
  pid: number
  nbdSocket?: string
  tcpPort?: number
  connections: number
  /** READ/WRITE payload bytes held right now, across all connections (--max-buffer). */
  payloadBytes: number
  /** How often serve has handed payload memory back to the system after a burst. */
  memoryHandBacks: number
  operation?: ProgressResult
}

export interface GroupStatusResult {
  name: string
  source: {path: string; size: number}
  extentSize: number
  extentCount: number
  createdAt: string
  clones: CloneStatusResult[]
  operation?: OperationStatusResult
  lockedBy?: {pid: number; command: string; startedAt: string}
  server?: ServerResult
}
export type StatusResult = Array<GroupStatusResult | DamagedGroupResult>

export interface RestoreResult {
  operationId: string
  clone: string
  protected: boolean
  resumed: boolean
  completed: boolean
  compared: boolean
  totalExtents: number
  copiedBytes: number
  skippedBytes: number
  codCopies: number
  codBytes: number
  collisions: number
  hostWrittenExtents: number
}

export interface VerifyResult {
  group: string
  clone: string
  extents: number
  violations: number[]
  markedEqual: number
  markedDifferent: number
  repaired: boolean
}

export interface DrillResult {
  kind: 'scratch' | 'group'
  dir?: string
  kept: boolean
  content: 'ext4' | 'random' | 'clone'
  sizeBytes: number
  timeToFirstHostIoMs?: number
  restoreMs: number
  throughputMBps: number
  codCopies: number
  bytesCopied: number
  hostReads: number
  hostWrites: number
  checks: Array<{name: string; ok: boolean; detail: string}>
  ok: boolean
}

/** Every failure under --json: stdout holds this, and the exit status is `status`. */
export interface ErrorResult {
  status: number
  error: {code: string; name: string; message: string; fix?: string}
  /**
   * A failure's own result: the report of a drill that failed a check (exit 10), or the
   * comparison of a verify that found differences the map did not cover (exit 9).
   */
  result?: DrillResult | VerifyResult
}

function volume(v: VolumeRecord): VolumeResult {
  return {path: v.path, kind: v.fingerprint.kind, size: v.fingerprint.size}
}

export function toGroupCreateResult(r: GroupRecord): GroupCreateResult {
  return {name: r.name, extentSize: r.extentSize, createdAt: r.createdAt, source: volume(r.source)}
}

export function toCloneResult(c: CloneRecord): CloneResult {
  const v = volume(c.volume)
  return {
    name: c.name,
    path: v.path,
    kind: v.kind,
    size: v.size,
    state: c.state,
    stateReason: c.stateReason,
    createdAt: c.createdAt,
    lastSyncAt: c.lastSyncAt,
    lastFractureAt: c.lastFractureAt,
    trusted: c.trusted,
    untrustedReason: c.untrustedReason,
  }
}

export function toSyncResult(s: SyncSummary): SyncResult {
  return {
    clone: s.clone,
    operationId: s.operationId || undefined,
    completed: s.completed,
    alreadySynchronized: s.alreadySynchronized,
    compared: s.compared,
    totalExtents: s.totalExtents,
    copiedBytes: s.copiedBytes,
    skippedBytes: s.skippedBytes,
    collisions: s.collisions,
    elapsedMs: s.elapsedMs,
  }
}

export function toCloneAddResult(out: {clone: CloneRecord; sync?: SyncSummary}): CloneAddResult {
  return {clone: toCloneResult(out.clone), sync: out.sync && toSyncResult(out.sync)}
}

export function toFractureResult(out: FractureResult[]): CloneFractureResult {
  return out.map((r) => ({clone: r.clone, state: r.state, alreadyFractured: r.alreadyFractured, fracturedAt: r.fracturedAt}))
}

export function toCloneRemoveResult(out: {clone: string; path: string}): CloneRemoveResult {
  return {clone: out.clone, path: out.path}
}

export function toGroupDestroyResult(group: string, out: {clones: number}): GroupDestroyResult {
  return {group, clones: out.clones}
}

export function toDamagedGroupResult(d: DamagedGroupReport): DamagedGroupResult {
  return {name: d.name, damaged: {file: d.damaged.file, reason: d.damaged.reason, code: d.damaged.code, fix: d.damaged.fix}}
}

export function toGroupListResult(all: Array<GroupStatus | DamagedGroupReport>): GroupListResult {
  return all.map((s) =>
    'damaged' in s
      ? toDamagedGroupResult(s)
      : {name: s.name, source: s.source.path, size: s.source.size, clones: s.clones.length, operation: s.operation ? `${s.operation.kind} ${s.operation.state}` : undefined},
  )
}

function toCloneStatus(c: CloneStatus): CloneStatusResult {
  return {
    name: c.name,
    path: c.path,
    state: c.state,
    stateReason: c.stateReason,
    dirtyExtents: c.dirtyExtents,
    dirtyBytes: c.dirtyBytes,
    inSyncPercent: c.inSyncPercent,
    trusted: c.trusted,
    damagedMapPages: c.damagedMapPages,
    mapDamage: c.mapDamage,
    lastSyncAt: c.lastSyncAt,
    lastFractureAt: c.lastFractureAt,
    unavailable: c.unavailable,
  }
}

function toOperationStatus(o: OperationStatus): OperationStatusResult {
  return {
    id: o.id,
    kind: o.kind,
    clone: o.clone,
    protected: o.protected,
    startedAt: o.startedAt,
    state: o.state,
    pid: o.pid,
    totalExtents: o.totalExtents,
    remainingExtents: o.remainingExtents,
    percentDone: o.percentDone,
    hostWrittenExtents: o.hostWrittenExtents,
    paused: o.paused,
    rate: o.rate || undefined,
  }
}

function toProgress(p: ProgressEvent): ProgressResult {
  return {
    operation: p.operation,
    clone: p.clone,
    totalBytes: p.totalBytes,
    doneBytes: p.doneBytes,
    remainingExtents: p.remainingExtents,
    codCopies: p.codCopies,
    paused: p.paused,
    // An unlimited rate is 0 or undefined inside; JSON says so by leaving it out.
    rate: p.rate || undefined,
  }
}

function toServer(s: NonNullable<GroupStatus['server']>): ServerResult {
  return {
    pid: s.pid,
    nbdSocket: s.nbdSocket,
    tcpPort: s.tcpPort,
    connections: s.connections,
    payloadBytes: s.payloadBytes,
    memoryHandBacks: s.memoryHandBacks,
    operation: s.operation && toProgress(s.operation),
  }
}

export function toGroupStatusResult(s: GroupStatus): GroupStatusResult {
  return {
    name: s.name,
    source: {path: s.source.path, size: s.source.size},
    extentSize: s.extentSize,
    extentCount: s.extentCount,
    createdAt: s.createdAt,
    clones: s.clones.map(toCloneStatus),
    operation: s.operation && toOperationStatus(s.operation),
    lockedBy: s.lockedBy && {pid: s.lockedBy.pid, command: s.lockedBy.command, startedAt: s.lockedBy.startedAt},
    server: s.server && toServer(s.server),
  }
}

export function toStatusResult(all: Array<GroupStatus | DamagedGroupReport>): StatusResult {
  return all.map((s) => ('damaged' in s ? toDamagedGroupResult(s) : toGroupStatusResult(s)))
}

export function toRestoreResult(r: RestoreSummary): RestoreResult {
  return {
    operationId: r.operationId,
    clone: r.clone,
    protected: r.protected,
    resumed: r.resumed,
    completed: r.completed,
    compared: r.compared,
    totalExtents: r.totalExtents,
    copiedBytes: r.copiedBytes,
    skippedBytes: r.skippedBytes,
    codCopies: r.codCopies,
    codBytes: r.codBytes,
    collisions: r.collisions,
    hostWrittenExtents: r.hostWrittenExtents,
  }
}

export function toVerifyResult(r: VerifyReport): VerifyResult {
  return {group: r.group, clone: r.clone, extents: r.extents, violations: [...r.violations], markedEqual: r.markedEqual, markedDifferent: r.markedDifferent, repaired: r.repaired}
}

export function toDrillResult(r: DrillReport): DrillResult {
  return {
    kind: r.kind,
    dir: r.dir,
    kept: r.kept,
    content: r.content,
    sizeBytes: r.sizeBytes,
    timeToFirstHostIoMs: r.timeToFirstHostIoMs,
    restoreMs: r.restoreMs,
    throughputMBps: r.throughputMBps,
    codCopies: r.codCopies,
    bytesCopied: r.bytesCopied,
    hostReads: r.hostReads,
    hostWrites: r.hostWrites,
    checks: r.checks.map((c) => ({name: c.name, ok: c.ok, detail: c.detail})),
    ok: r.ok,
  }
}

/** A running sync or restore, as `job list|pause|resume|rate|cancel --json` print it. */
export interface JobResult {
  group: string
  kind: 'sync' | 'restore'
  clone: string
  runner: 'serve' | 'foreground'
  pid: number
  state: 'running' | 'paused' | 'cancelled'
  /** Bytes per second; absent when unlimited. */
  rate?: number
  totalBytes: number
  doneBytes: number
  remainingExtents: number
  percentDone: number
  codCopies?: number
}

export function toJobResult(j: JobInfo): JobResult {
  return {
    group: j.group,
    kind: j.kind,
    clone: j.clone,
    runner: j.runner,
    pid: j.pid,
    state: j.state,
    rate: j.rate || undefined,
    totalBytes: j.totalBytes,
    doneBytes: j.doneBytes,
    remainingExtents: j.remainingExtents,
    percentDone: j.percentDone,
    codCopies: j.codCopies,
  }
}
