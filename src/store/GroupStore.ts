/**
 * The groups under a state directory: STATE/groups/NAME/ holds group.json (replaced
 * atomically), one map file per clone, P while a protected restore runs, the lock and the
 * sockets of a running server (DESIGN §3).
 *
 * Every file is read and written through the DurableFs, so a crash test can run a group on a
 * MemoryFs. Two things are not: the lock (GroupLock, real files by nature) and the removal of
 * directories in destroy(), which DurableFs cannot express yet (it has no rmdir).
 */
import {rm, rmdir} from 'node:fs/promises'
import {join} from 'node:path'
import {CorruptStateError, errnoOf, LockHeldError, NotFoundError, RefusedError, VolumeIoError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {writeFileAtomic} from '../io/atomicWrite.js'
import {describeHolder, GroupLock} from './GroupLock.js'
import {type GroupRecord, parseGroupRecord} from './GroupRecord.js'
import {isValidName, validateName} from './stateDir.js'

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

/** group.json files under STATE/groups/<name>/, each replaced atomically. */
export class GroupStore {
  constructor(
    readonly fs: DurableFs,
    readonly stateDir: string,
  ) {}

  /** STATE/groups */
  get groupsDir(): string {
    return join(this.stateDir, 'groups')
  }

  /** STATE/groups/NAME; a UsageError for a name that is not valid (so never a path outside). */
  groupDir(name: string): string {
    validateName('group', name)
    return join(this.groupsDir, name)
  }

  groupFile(name: string): string {
    return join(this.groupDir(name), GROUP_FILE)
  }

  /** A file of the group directory, by its plain name (e.g. a CloneRecord's mapFile). */
  mapPath(group: string, fileName: string): string {
    if (fileName === '' || fileName === '.' || fileName === '..' || /[/\0]/.test(fileName)) throw new RangeError(`map file name ${JSON.stringify(fileName)} is not a plain file name`)
    return join(this.groupDir(group), fileName)
  }

  /** Names of the groups (directories with a group.json), sorted. Waits. */
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
      // eslint-disable-next-line no-await-in-loop
      if (isValidName(n) && (await this.fs.exists(join(this.groupsDir, n, GROUP_FILE)))) out.push(n)
    }
    return out.sort()
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
    let text: Buffer
    try {
      text = await this.fs.readFile(file)
    } catch (error) {
      const code = errnoOf(error)
      if (code === 'ENOENT') throw new NotFoundError(`no clone group named ${name} in ${this.stateDir}`, 'list groups with `clonectl group list`')
      if (code === 'EACCES' || code === 'EPERM')
        throw new VolumeIoError(`cannot read ${file}: permission denied`, code, `run clonectl as the user that owns ${this.stateDir}, or pass --state-dir`)
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
   * is reused. Not atomic against a concurrent create of the same name: DurableFs has no
   * exclusive mkdir, so two simultaneous creates may both succeed, the later save winning.
   * Waits.
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
        // eslint-disable-next-line no-await-in-loop
        if (!GroupLock.ownsName(n)) await this.fs.unlink(join(dir, n))
      }
    }
    await this.fs.mkdirp(dir, 0o700)
    await this.fs.fsyncDir(this.groupsDir)
    await this.save(record)
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
      throw new Error(`refusing to write an invalid group record: ${(error as Error).message}`)
    }
    await writeFileAtomic(this.fs, file, Buffer.from(text))
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
    let entries: string[]
    try {
      entries = await this.fs.readdir(dir)
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return
      throw error
    }
    const foreign = entries.filter((n) => !isOwnGroupFile(n))
    if (foreign.length > 0)
      throw new RefusedError(`${dir} holds files clonectl did not make: ${foreign.join(', ')}; nothing was removed`, 'move them elsewhere, then run the command again')
    const mine = GroupLock.heldBy(dir)
    const ours = mine !== undefined
    const holder = ours ? undefined : await GroupLock.inspect(dir)
    if (holder) throw new LockHeldError(`group ${name} is locked by ${describeHolder(holder)}`)

    if (entries.includes(GROUP_FILE)) {
      await this.fs.unlink(join(dir, GROUP_FILE))
      await this.fs.fsyncDir(dir)
    }
    for (const n of entries) {
      // eslint-disable-next-line no-await-in-loop
      if (n !== GROUP_FILE && !GroupLock.ownsName(n)) await this.fs.unlink(join(dir, n))
    }
    // The lock's files are real files whatever this.fs is. Our own live lock stays for
    // GroupLock.release, which then removes the directory.
    for (const n of entries) {
      if (!GroupLock.ownsName(n) || (ours && (n === 'lock' || n === 'lock.holder.json'))) continue
      // eslint-disable-next-line no-await-in-loop
      await rm(join(dir, n), {recursive: true, force: true})
    }
    if (mine) {
      mine.removeDirectoryOnRelease()
      return
    }
    await rmdir(dir).catch((error: unknown) => {
      if (errnoOf(error) !== 'ENOENT' && errnoOf(error) !== 'ENOTEMPTY') throw error
    })
  }

  /**
   * Every volume used by any group, for the "already used" check: each group's source (clone
   * '(source)') and each of its clones. Waits.
   */
  async allClonePaths(): Promise<VolumeUse[]> {
    const out: VolumeUse[] = []
    for (const g of await this.list()) {
      // eslint-disable-next-line no-await-in-loop
      const r = await this.load(g)
      out.push({group: g, clone: '(source)', path: r.source.path})
      for (const c of r.clones) out.push({group: g, clone: c.name, path: c.volume.path})
    }
    return out
  }
}
