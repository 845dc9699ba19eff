"""param.set ban_lurker_age (or _sleep) wakes the ban lurker: it reads them afresh, as varnishd's does
each time it wakes, instead of sleeping until the old age would have made a ban due."""

from __future__ import annotations

import asyncio

from polling import async_wait_for

from cacheserver.admin import AdminCommands
from cacheserver.server import Server


def test_lowering_ban_lurker_age_wakes_the_lurker():
    async def scenario():
        server = Server(storage_bytes=1 << 20)
        admin = AdminCommands(server)
        st = server.storage
        assert (await admin.execute(["param.set", "ban_lurker_age", "60"]))[0] == 200
        st.ban("obj.status == 200")
        loop = asyncio.get_running_loop()
        # the lurker's first look: nothing due for a minute, so it sleeps that long
        await async_wait_for(lambda: st._lurker is not None and st._lurker.when() - loop.time() > 50,
                             what="the lurker asleep for a minute")
        assert (await admin.execute(["param.set", "ban_lurker_age", "0"]))[0] == 200
        assert st._lurker.when() - loop.time() < 0.1                              # looks now
        st._lurker.cancel()

    asyncio.run(scenario())
