import type {ExtentBitmap} from '../map/ExtentBitmap.js'
import type {CloneEvent, MoveOptions} from '../store/cloneStates.js'
import type {CloneRecord, CloneState, GroupRecord} from '../store/GroupRecord.js'
import type {Volume} from '../volume/Volume.js'
import type {CollisionDetector} from './CollisionDetector.js'
import type {DeltaMap, GroupMaps} from './GroupMaps.js'
import type {Scoreboard} from './Scoreboard.js'

/**
 * The engines' port onto the group model: just what the sync, restore and host-I/O engines
 * use of an open group. CloneGroup (src/group) implements it; nothing in src/engine imports
 * src/group, so the dependency runs one way (group → engine).
 */

/** One clone of the group, as the engines see it (CloneMember implements it). */
export interface EngineMember {
  readonly name: string
  readonly state: CloneState
  readonly record: CloneRecord
  /** D[k]; replaced whole only by the group (a rebuilt damaged map). */
  readonly map: DeltaMap
  /** The open volume, if any (undefined when unavailable or not opened). */
  readonly volume: Volume | undefined
  /** The open volume; throws why it is not available. */
  readonly vol: Volume
  /** Write-intent extents of a mirrored clone (see CloneMember.intent). */
  intent?: ExtentBitmap
  requireAvailable(): void
  /** Move the clone's state through the state machine (src/store/cloneStates.ts). */
  apply(event: CloneEvent, opts?: MoveOptions): void
  dirtyCount(): number
  sweepIntent(quietMs: number, force?: boolean): void
  beginMirror(s: number, e: number, busy: (x: number) => boolean, region?: number): {marked: number[]; durable: [number, number]} | undefined
  endMirror(marked: number[], ok: boolean): void
}

/** An open clone group, as the engines see it (CloneGroup implements it). */
export interface EngineGroup {
  readonly name: string
  readonly extentSize: number
  readonly volumeSize: number
  readonly extentCount: number
  readonly record: GroupRecord
  readonly ctx: {readonly warn?: (message: string) => void; readonly store: {readonly stateDir: string}}
  /** The source volume; throws when it is not open. */
  readonly src: Volume
  readonly members: ReadonlyMap<string, EngineMember>
  /** The clone named `name`; a NotFoundError naming the group when there is none. */
  member(name: string): EngineMember
  readonly scoreboard: Scoreboard
  readonly collisions: CollisionDetector
  /** The group's map files: D[k], and P while a protected restore runs. */
  readonly maps: GroupMaps
  /** Volumes whose fingerprint changed outside clonectl ('(source)' or a clone's name). */
  readonly changedOutside: ReadonlySet<string>
  noteWritten(v: Volume): void
  /** Make completed copies and host writes durable (DESIGN §4). Waits. */
  checkpoint(): Promise<void>
  /** Save group.json atomically. Waits. */
  save(): Promise<void>
  /** Undo, in memory, the moves of a start whose save failed (see CloneGroup.snapshotForUndo). */
  snapshotForUndo(): () => void
  refreshFingerprints(): Promise<void>
}
