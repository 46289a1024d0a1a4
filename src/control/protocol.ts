/**
 * The control socket between a running `serve` (which owns the group) and every other
 * invocation (DESIGN §5). Newline-delimited JSON over a unix socket, mode 0600, in the group
 * directory. One request per connection; the server streams progress lines, then one result.
 */
export type ControlRequest =
  | {op: 'ping'}
  | {op: 'status'}
  | {op: 'sync'; clone: string; full?: boolean; rate?: number; background?: boolean}
  | {op: 'fracture'; clones: string[]}
  | {op: 'add'; clone: string; path: string; create?: boolean}
  | {op: 'remove'; clone: string}
  | {op: 'restore'; clone?: string; unprotected?: boolean; force?: boolean; rate?: number; background?: boolean; disconnectClients?: boolean}
  | {op: 'verify'; clone: string; repair?: boolean}
  | {op: 'pause'}
  | {op: 'resume'}
  | {op: 'rate'; rate?: number}
  | {op: 'cancel'}

export interface ControlError {
  code: string
  exitCode: number
  message: string
  fix?: string
}

export type ControlMessage =
  | {type: 'progress'; progress: unknown}
  | {type: 'log'; message: string}
  | {type: 'result'; ok: true; value: unknown}
  | {type: 'result'; ok: false; error: ControlError}

export const controlSocketName = 'control.sock'
