//! Passing one file descriptor over a Unix stream socket (`SCM_RIGHTS`), the only unsafe
//! part of the port holder: the `msghdr`/`cmsghdr` plumbing of sendmsg(2) and recvmsg(2).
//!
//! A message is a short line of text; a descriptor, when there is one, rides on its first
//! byte. The receiver takes descriptors with `MSG_CMSG_CLOEXEC`, so a listening socket the
//! server receives is never inherited by the shims and services it starts (an inherited
//! copy would keep a released port open for as long as that service runs).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Room for the control message of one descriptor, as `u64`s so that the buffer has the
/// alignment `cmsghdr` needs.
const CONTROL_WORDS: usize = 4;

/// Sends `data` on `socket`, with `fd` attached to its first byte when given.
pub(crate) fn send(socket: &UnixStream, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw: RawFd = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE and CMSG_LEN are arithmetic on a length. `control` outlives
        // `msg`, is aligned for cmsghdr (u64) and, at 32 bytes, larger than CMSG_SPACE of one
        // int (24 on 64-bit Linux), so CMSG_FIRSTHDR returns a header inside it and
        // CMSG_DATA points at room for the int that follows it.
        unsafe {
            let space = libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) as usize;
            debug_assert!(space <= mem::size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
        }
    }
    // SAFETY: `msg` points at `iov` (which points into `data`) and at `control`, all alive
    // for the call; sendmsg only reads them. MSG_NOSIGNAL: a vanished peer is an EPIPE error,
    // not a signal.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The descriptor went with the first byte; a short send (not seen with lines this small)
    // goes on as plain writes.
    let rest = &data[sent as usize..];
    if !rest.is_empty() {
        io::Write::write_all(&mut &*socket, rest)?;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from `socket`, adding any descriptor that came with them
/// to `fds` (close-on-exec). Returns the number of bytes, 0 at the end of the stream.
pub(crate) fn recv(
    socket: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    let received = loop {
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and writable
        // for the call, with their true lengths; recvmsg writes only within them.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    // SAFETY: after a successful recvmsg, the kernel has set msg_controllen to the bytes of
    // control data it wrote into `control`; CMSG_FIRSTHDR/CMSG_NXTHDR walk only within that,
    // and each SCM_RIGHTS message's data holds (cmsg_len - CMSG_LEN(0)) / size_of::<int>()
    // descriptors that are now ours, so each is wrapped in an OwnedFd exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "a descriptor was cut off in transit (more were sent than asked for)",
        ));
    }
    Ok(received)
}
