import {dirname} from 'node:path'
import type {DurableFs} from './DurableFs.js'

/**
 * Replace `path` with `data` atomically and durably: write a temp file, fdatasync it,
 * rename it over `path`, fsync the directory. A crash leaves either the old or the new
 * content, never a mix.
 */
export async function writeFileAtomic(fs: DurableFs, path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now().toString(36)}`
  const f = await fs.open(tmp, {write: true, create: 'new'})
  try {
    await f.write(data, 0)
    await f.datasync()
  } finally {
    await f.close()
  }
  await fs.rename(tmp, path)
  await fs.fsyncDir(dirname(path))
}
