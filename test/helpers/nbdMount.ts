/**
 * An NBD export mounted as a file system, as a host would: nbdfuse exposes it as a file,
 * losetup makes that a block device, the kernel mounts it. (test/interop/ext4Restore.test.ts
 * keeps its own copy of these steps.)
 */
import {spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {run, runOk} from './serve.js'
import {waitFor} from './waitFor.js'

export interface Mounted {
  mnt: string
  loop: string
  /** Unmount, detach the loop device, stop nbdfuse: in that order, each at most once. */
  detach: () => Promise<void>
}

export interface MountOptions {
  /** Extra options for mount(8), e.g. ['-o', 'discard']. */
  mountOptions?: string[]
  /** nbdfuse -r and losetup -r: nothing can write the export through this mount. */
  readOnly?: boolean
}

/**
 * Mount the ext4 file system on export `uri` at `dir`/NAME-mnt. The caller must call
 * detach() (also when a test fails). Waits.
 */
export async function mountExport(dir: string, uri: string, name: string, opts: MountOptions = {}): Promise<Mounted> {
  const ro = opts.readOnly ? ['-r'] : []
  const fuseDir = join(dir, `${name}-fuse`)
  const mnt = join(dir, `${name}-mnt`)
  const pidFile = join(dir, `${name}.pid`)
  await fsp.mkdir(fuseDir, {recursive: true})
  await fsp.mkdir(mnt, {recursive: true})
  const fuse = spawn('nbdfuse', [...ro, '-P', pidFile, fuseDir, uri], {stdio: ['ignore', 'ignore', 'pipe']})
  let fuseErr = ''
  fuse.stderr.on('data', (b: Buffer) => (fuseErr += b.toString()))
  const fuseExit = new Promise<void>((r) => fuse.on('exit', () => r()))
  const steps: Array<() => Promise<unknown>> = [
    async () => {
      await run('fusermount3', ['-u', fuseDir])
      await fuseExit
    },
  ]
  const detach = async (): Promise<void> => {
    for (const s of steps.splice(0).reverse()) await s().catch(() => undefined)
  }
  try {
    await waitFor(() => {
      if (fuse.exitCode !== null) throw new Error(`nbdfuse exited: ${fuseErr}`)
      return existsSync(pidFile)
    }, `nbdfuse to serve ${uri}`, 10_000)
    await fsp.rm(pidFile)
    const loop = (await runOk('losetup', [...ro, '-f', '--show', join(fuseDir, 'nbd')])).stdout.trim()
    steps.push(() => runOk('losetup', ['-d', loop]))
    await runOk('mount', ['-t', 'ext4', ...(opts.mountOptions ?? []), loop, mnt])
    steps.push(() => runOk('umount', [mnt]))
    return {mnt, loop, detach}
  } catch (error) {
    await detach()
    throw error
  }
}
