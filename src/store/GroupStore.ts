/**
 * The groups under a state directory: STATE/groups/NAME/ holds group.json (replaced
 * atomically), one map file per clone, P while a protected restore runs, the lock and the
 * sockets of a running server (DESIGN §3).
 *
 * Every file is read and written through the DurableFs, so a crash test can run a group on a
 * MemoryFs. Two things are not: the lock (GroupLock, real files by nature) and the removal of
 * directories in destroy(), which DurableFs cannot express yet (it has no rmdir).
 */
// fs.promises, read at each call: node:fs/promises loads on first use (see NodeDurableFs).
import {promises as fsp} from 'node:fs'
import {dirname, join} from 'node:path'
import {ClonectlError, CorruptStateError, errnoOf, LockHeldError, NotFoundError, RefusedError, UntrustedStateError, VolumeIoError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {writeFileAtomic} from '../io/atomicWrite.js'
import {describeHolder, GroupLock} from './GroupLock.js'
import {damagedRecordFix, type GroupRecord, parseGroupRecord} from './GroupRecord.js'
import {isValidName, stateWriteError, validateName} from './stateDir.js'
import {checkTrusted} from './trust.js'

export const GROUP_FILE = 'group.json'

/** A temp file of writeFileAtomic: NAME.tmp-PID-HEX. */
const TEMP = /\.tmp-\d+-[0-9a-f]+$/
/** What clonectl itself makes in a group directory (besides the lock's files). */
const OWN = /^(group\.json|[A-Za-z0-9][A-Za-z0-9._-]*\.(map|pmap|sock))$/

/** True for a name clonectl makes in a group directory: destroy removes these and nothing else. */
export function isOwnGroupFile(name: string): boolean {
  return OWN.test(name.replace(TEMP, '')) || GroupLock.ownsName(name)
}

export interface VolumeUse {
  group: string
  /** The clone's name, or '(source)' for the group's source. */
  clone: string
  path: string
}

/** A group whose group.json cannot be read or trusted: listed as damaged, never guessed at. */
export interface DamagedGroup {
  name: string
  /** The file (or directory) at fault. */
  file: string
  /** Why, in the error's own words. */
  reason: string
  error: ClonectlError
}

/** A damaged group as `status` and `group list` show it (also in --json). */
export interface DamagedGroupReport {
  name: string
  damaged: {file: string; reason: string; code: string; fix?: string}
}

export function damagedReport(d: DamagedGroup): DamagedGroupReport {
  return {name: d.name, damaged: {file: d.file, reason: d.reason, code: d.error.code, fix: d.error.fix}}
}

/** How a group's state directory entries are checked (the lock's directories keep the umask's mode). */
const LOCK_DIRS = new Set(['lock', 'lock.gate'])

/** group.json files under STATE/groups/<name>/, each replaced atomically. */
export class GroupStore {
  /** Whether withCreationLock takes the lock (a real file): false only for a store on a MemoryFs in tests. */
  readonly creationLock: boolean
  /** STATE/groups */
  readonly groupsDir: string
  // Each group's directory, joined once: status asks it a dozen times a group, and path.join
  // normalizes the whole path each time (~0.1 ms a group before V8 has optimized it).
  private readonly dirs = new Map<string, string>()

  constructor(
    readonly fs: DurableFs,
    readonly stateDir: string,
    opts: {creationLock?: boolean} = {},
  ) {
    this.creationLock = opts.creationLock ?? true
    this.groupsDir = join(stateDir, 'groups')
  }

  /** STATE/groups/NAME; a UsageError for a name that is not valid (so never a path outside). */
  groupDir(name: string): string {
    validateName('group', name)
    let dir = this.dirs.get(name)
    if (dir === undefined) this.dirs.set(name, (dir = join(this.groupsDir, name)))
    return dir
  }

  groupFile(name: string): string {
    return join(this.groupDir(name), GROUP_FILE)
  }

  /** A file of the group directory, by its plain name (e.g. a CloneRecord's mapFile). */
  mapPath(group: string, fileName: string): string {
    if (fileName === '' || fileName === '.' || fileName === '..' || /[/\0]/.test(fileName)) throw new RangeError(`map file name ${JSON.stringify(fileName)} is not a plain file name`)
    return join(this.groupDir(group), fileName)
  }

  /**
   * Names of the groups (directories with a group.json), sorted. A group directory or
   * group.json that is a symlink is listed too, so that load() refuses it by name rather
   * than it vanishing from the list. Waits.
   */
  async list(): Promise<string[]> {
    let names: string[]
    try {
      names = await this.fs.readdir(this.groupsDir)
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return []
      throw error
    }
    const out: string[] = []
    for (const n of names) {
      if (isValidName(n) && (await this.present(join(this.groupsDir, n)))) out.push(n)
    }
    return out.sort()
  }

  /** A group directory that holds a group.json, or is (or holds one that is) a symlink. */
  private async present(dir: string): Promise<boolean> {
    if (!this.fs.lstat) return this.fs.exists(join(dir, GROUP_FILE))
    const lstat = this.fs.lstat.bind(this.fs)
    const d = await lstat(dir).catch(() => undefined)
    if (!d) return false
    if (d.isSymlink) return true
    return (await lstat(join(dir, GROUP_FILE)).catch(() => undefined)) !== undefined
  }

  /** A directory's entries, or undefined when it does not exist. Waits. */
  private async entriesOf(dir: string): Promise<string[] | undefined> {
    try {
      return await this.fs.readdir(dir)
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined
      throw error
    }
  }

  /**
   * Refuse (UntrustedStateError) a group directory that is a symlink, not ours or writable
   * by others, or that holds such an entry (group.json, a map, P, the lock's files, a
   * socket). Runs before anything in it is read (DESIGN §3). Waits (a readdir, an lstat per entry).
   */
  async checkGroupDir(name: string): Promise<void> {
    const dir = this.groupDir(name)
    await checkTrusted(this.fs, dir, 'directory')
    if (!this.fs.lstat) return
    const entries = await this.entriesOf(dir)
    if (!entries) return
    for (const n of entries) {
      const path = join(dir, n)
      const st = await this.fs.lstat(path).catch(() => undefined)
      if (st) await checkTrusted(this.fs, path, st.isDirectory ? 'directory' : 'file', {ignoreMode: LOCK_DIRS.has(n)})
    }
  }

  /** Whether the group exists (has a group.json). Waits. */
  exists(name: string): Promise<boolean> {
    return this.fs.exists(this.groupFile(name))
  }

  /**
   * Read and validate group.json: NotFoundError when there is no such group, CorruptStateError
   * (naming the file and field) when it cannot be trusted. Waits.
   */
  async load(name: string): Promise<GroupRecord> {
    const file = this.groupFile(name)
    await this.checkGroupDir(name)
    let text: Buffer
    try {
      text = await this.fs.readFile(file, {noFollow: true})
    } catch (error) {
      const code = errnoOf(error)
      if (code === 'ENOENT') throw new NotFoundError(`no clone group named ${name} in ${this.stateDir}`, 'list groups with `clonectl group list`')
      if (code === 'ELOOP') throw new UntrustedStateError(`${file} is a symlink; clonectl never follows a symlink inside its state directory`, 'remove the symlink and put the real file there (or restore the state from a backup)')
      if (code === 'EACCES' || code === 'EPERM')
        throw new VolumeIoError(`cannot read ${file}: permission denied`, code, `run clonectl as the user that owns ${this.stateDir}, or pass --state-dir`)
      if (code === 'EISDIR') throw new CorruptStateError(`${file} is a directory, not clonectl's group file`, damagedRecordFix(file))
      throw error
    }
    const record = parseGroupRecord(text.toString('utf8'), file)
    if (record.name !== name)
      throw new CorruptStateError(`${file}: field group.name is ${JSON.stringify(record.name)}, but the file is in the directory of group ${name}`, 'correct the name field, or restore the file from a backup')
    return record
  }

  /**
   * Make the group directory (0700) and its first group.json, durably. Refuses (RefusedError)
   * when the group exists, or when its directory holds files clonectl did not make. A
   * directory left by an interrupted create or destroy (no group.json, only our own files)
   * is reused. Not atomic by itself against a concurrent create of the same name (DurableFs
   * has no exclusive mkdir): createGroup runs it under withCreationLock. A failed save (a
   * full file system) leaves no directory behind. Waits.
   */
  async create(record: GroupRecord): Promise<void> {
    const dir = this.groupDir(record.name)
    if (await this.exists(record.name)) throw new RefusedError(`clone group ${record.name} already exists (${dir})`, `pick another name, or see it with \`clonectl status ${record.name}\``)
    if (await this.fs.exists(dir)) {
      const entries = await this.fs.readdir(dir)
      const foreign = entries.filter((n) => !isOwnGroupFile(n))
      if (foreign.length > 0)
        throw new RefusedError(`${dir} already exists and holds files clonectl did not make: ${foreign.join(', ')}`, `move them elsewhere, or pick another group name`)
      // Leftovers of an interrupted create or destroy; the lock's files are GroupLock's business.
      for (const n of entries) {
        if (!GroupLock.ownsName(n)) await this.fs.unlink(join(dir, n))
      }
    }
    try {
      await this.fs.mkdirp(dir, 0o700)
      // The whole chain: groups/ in the state directory and the state directory in its parent
      // may themselves be new (a first `group create` on a fresh machine), and a directory
      // entry is durable only once its parent is fsynced. Rare, so paid every time.
      await this.fs.fsyncDir(this.groupsDir)
      await this.fs.fsyncDir(this.stateDir)
      await this.fs.fsyncDir(dirname(this.stateDir))
    } catch (error) {
      throw stateWriteError(this.stateDir, dir, error)
    }
    try {
      await this.save(record)
    } catch (error) {
      // Nothing half-made stays: a group directory without a group.json is no group.
      await fsp.rmdir(dir).catch(() => undefined)
      throw error
    }
  }

  /**
   * Replace group.json atomically and durably (temp, datasync, rename, fsync dir), as pretty
   * JSON. The record is checked as load() would check it first: what cannot be read back is
   * never written (that is a bug, thrown as a plain Error). Concurrent saves of one group
   * must be serialized by the caller (CloneGroup does). Waits.
   */
  async save(record: GroupRecord): Promise<void> {
    const file = this.groupFile(record.name)
    const text = `${JSON.stringify(record, null, 2)}\n`
    try {
      parseGroupRecord(text, file)
    } catch (error) {
      throw new Error(`refusing to write an invalid group record: ${(error as Error).message}`, {cause: error})
    }
    try {
      await writeFileAtomic(this.fs, file, Buffer.from(text))
    } catch (error) {
      throw stateWriteError(this.stateDir, file, error)
    }
  }

  /**
   * Remove the group's state: group.json first (durably: from then on the group does not
   * exist), then its maps, sockets and temp files, then the lock's files and the directory.
   * Never volume data, and never a file clonectl did not make: a directory holding one is
   * refused (RefusedError) before anything is removed. Refused (LockHeldError) while another
   * live process holds the group lock; under this process's own lock (the usual case: the
   * command takes it first), the lock's files and the directory are removed by its
   * release(). Idempotent. Waits.
   */
  async destroy(name: string): Promise<void> {
    const dir = this.groupDir(name)
    const entries = await this.entriesOf(dir)
    if (!entries) return
    const foreign = entries.filter((n) => !isOwnGroupFile(n))
    if (foreign.length > 0)
      throw new RefusedError(`${dir} holds files clonectl did not make: ${foreign.join(', ')}; nothing was removed`, 'move them elsewhere, then run the command again')
    const mine = GroupLock.heldBy(dir)
    const ours = mine !== undefined
    const holder = ours ? undefined : await GroupLock.inspect(dir)
    if (holder) throw new LockHeldError(`group ${name} is locked by ${describeHolder(holder)}`)

    // One of our names that is a directory (a hand edit, a damaged state): removed only when
    // empty; one that holds anything is not ours to remove.
    const removeOwn = async (path: string): Promise<void> => {
      try {
        await this.fs.unlink(path)
      } catch (error) {
        if (!['EISDIR', 'ERR_FS_EISDIR', 'EPERM'].includes(errnoOf(error) ?? '')) throw error
        await fsp.rmdir(path).catch((e: unknown) => {
          if (errnoOf(e) === 'ENOTEMPTY' || errnoOf(e) === 'EEXIST') throw new RefusedError(`${path} is a directory holding files clonectl did not make; nothing more was removed`, 'move it elsewhere, then run the command again')
          throw e
        })
      }
    }
    if (entries.includes(GROUP_FILE)) {
      await removeOwn(join(dir, GROUP_FILE))
      await this.fs.fsyncDir(dir)
    }
    for (const n of entries) {
      if (n !== GROUP_FILE && !GroupLock.ownsName(n)) await removeOwn(join(dir, n))
    }
    // The lock's files are real files whatever this.fs is. Our own live lock stays for
    // GroupLock.release, which then removes the directory.
    for (const n of entries) {
      if (!GroupLock.ownsName(n) || (ours && (n === 'lock' || n === 'lock.holder.json'))) continue
      await fsp.rm(join(dir, n), {recursive: true, force: true})
    }
    if (mine) {
      mine.removeDirectoryOnRelease()
      return
    }
    await fsp.rmdir(dir).catch((error: unknown) => {
      if (errnoOf(error) !== 'ENOENT' && errnoOf(error) !== 'ENOTEMPTY') throw error
    })
  }

  /**
   * Every group's record, and the groups whose group.json cannot be read or trusted (a
   * CorruptStateError or UntrustedStateError, each naming its file): one damaged group never
   * hides the others. Any other error (EIO) is thrown. Waits.
   */
  async loadAll(): Promise<{records: GroupRecord[]; damaged: DamagedGroup[]}> {
    const records: GroupRecord[] = []
    const damaged: DamagedGroup[] = []
    for (const g of await this.list()) {
      try {
        records.push(await this.load(g))
      } catch (error) {
        const d = this.damage(g, error)
        if (!d) throw error
        damaged.push(d)
      }
    }
    return {records, damaged}
  }

  /** The group as damaged, if `error` (from load) says its state cannot be trusted; else undefined. */
  damage(name: string, error: unknown): DamagedGroup | undefined {
    if (!(error instanceof CorruptStateError) && !(error instanceof UntrustedStateError)) return undefined
    const file = /^(\/\S*?):? /.exec(error.message)?.[1] ?? this.groupFile(name)
    return {name, file, reason: error.message, error}
  }

  /**
   * Every volume used by any group, for the "already used" check: each group's source (clone
   * '(source)') and each of its clones, except those of `except`. A damaged group's volumes
   * cannot be known: it is reported to onDamaged (a warning) and skipped, so it never blocks
   * the other groups. Waits.
   */
  async allClonePaths(o: {except?: string; onDamaged?: (d: DamagedGroup) => void} = {}): Promise<VolumeUse[]> {
    const out: VolumeUse[] = []
    const {records, damaged} = await this.loadAll()
    for (const d of damaged) if (d.name !== o.except) o.onDamaged?.(d)
    for (const r of records) {
      if (r.name === o.except) continue
      out.push({group: r.name, clone: '(source)', path: r.source.path})
      for (const c of r.clones) out.push({group: r.name, clone: c.name, path: c.volume.path})
    }
    return out
  }

  /**
   * Run fn under the state directory's creation lock: a volume joins a group (group create,
   * clone add) one at a time across all groups, so two racing commands can never both find a
   * volume unused. Held for the check and the record only, never for a copy. Waits for it
   * (a holder keeps it for milliseconds) up to `waitSeconds` (default 60).
   */
  async withCreationLock<T>(command: string, fn: () => Promise<T>, waitSeconds = 60): Promise<T> {
    if (!this.creationLock) return fn()
    let lost: Error | undefined
    const lock = await GroupLock.acquire({
      groupDir: this.stateDir,
      group: `(state directory ${this.stateDir})`,
      command,
      waitSeconds,
      onCompromised: (error) => {
        lost = error
      },
    })
    try {
      const out = await fn()
      if (lost) throw new LockHeldError(`lost the creation lock of ${this.stateDir}: ${lost.message}`, 'check that no other clonectl runs, then run the command again')
      return out
    } finally {
      await lock.release().catch(() => undefined)
    }
  }
}
