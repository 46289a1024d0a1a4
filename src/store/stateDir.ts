import {homedir} from 'node:os'
import {join} from 'node:path'
import {UsageError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'

/** --state-dir, else $CLONECTL_STATE_DIR, else /var/lib/clonectl (root), else the XDG state dir. */
export function resolveStateDir(flag?: string, env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  if (flag) return flag
  if (env.CLONECTL_STATE_DIR) return env.CLONECTL_STATE_DIR
  if (uid === 0) return '/var/lib/clonectl'
  const base = env.XDG_STATE_HOME || join(env.HOME || homedir(), '.local', 'state')
  return join(base, 'clonectl')
}

/** Create the state directory and groups/ (mode 0700). Waits. */
export async function ensureStateDir(fs: DurableFs, dir: string): Promise<void> {
  await fs.mkdirp(join(dir, 'groups'), 0o700)
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export function validateName(kind: 'group' | 'clone', name: string): void {
  if (!NAME.test(name))
    throw new UsageError(`${kind} name "${name}" is not allowed`, 'use 1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit')
}
