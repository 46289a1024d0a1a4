import {rm} from 'node:fs/promises'
import {join} from 'node:path'
import {NotFoundError, RefusedError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {writeFileAtomic} from '../io/atomicWrite.js'
import {type GroupRecord, parseGroupRecord} from './GroupRecord.js'

/** group.json files under STATE/groups/<name>/, each replaced atomically. */
export class GroupStore {
  constructor(
    readonly fs: DurableFs,
    readonly stateDir: string,
  ) {}

  groupDir(name: string): string {
    return join(this.stateDir, 'groups', name)
  }

  groupFile(name: string): string {
    return join(this.groupDir(name), 'group.json')
  }

  mapPath(group: string, fileName: string): string {
    return join(this.groupDir(group), fileName)
  }

  async list(): Promise<string[]> {
    const dir = join(this.stateDir, 'groups')
    if (!(await this.fs.exists(dir))) return []
    const out: string[] = []
    for (const n of await this.fs.readdir(dir))
      // eslint-disable-next-line no-await-in-loop
      if (await this.fs.exists(this.groupFile(n))) out.push(n)
    return out.sort()
  }

  exists(name: string): Promise<boolean> {
    return this.fs.exists(this.groupFile(name))
  }

  async load(name: string): Promise<GroupRecord> {
    const file = this.groupFile(name)
    let text: Buffer
    try {
      text = await this.fs.readFile(file)
    } catch (error) {
      if ((error as {code?: string}).code === 'ENOENT') throw new NotFoundError(`no clone group named ${name} in ${this.stateDir}`, 'list groups with `clonectl group list`')
      throw error
    }
    return parseGroupRecord(text.toString('utf8'), file)
  }

  /** Make the group directory (0700) and its first group.json. Waits. */
  async create(record: GroupRecord): Promise<void> {
    const dir = this.groupDir(record.name)
    if (await this.fs.exists(dir)) throw new RefusedError(`clone group ${record.name} already exists (${dir})`)
    await this.fs.mkdirp(dir, 0o700)
    await this.save(record)
  }

  /** Replace group.json atomically: temp, datasync, rename, fsync dir. Waits. */
  async save(record: GroupRecord): Promise<void> {
    await writeFileAtomic(this.fs, this.groupFile(record.name), Buffer.from(`${JSON.stringify(record, null, 2)}\n`))
  }

  /** Remove the group's state directory (never volume data). Waits. */
  async destroy(name: string): Promise<void> {
    await rm(this.groupDir(name), {recursive: true, force: true})
  }

  /** Every volume used by any group, for the "already used" check. */
  async allClonePaths(): Promise<Array<{group: string; clone: string; path: string}>> {
    const out: Array<{group: string; clone: string; path: string}> = []
    for (const g of await this.list()) {
      // eslint-disable-next-line no-await-in-loop
      const r = await this.load(g)
      out.push({group: g, clone: '(source)', path: r.source.path})
      for (const c of r.clones) out.push({group: g, clone: c.name, path: c.volume.path})
    }
    return out
  }
}
