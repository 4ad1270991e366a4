from common.component import main_for
from scheduler.component import Scheduler

main_for(Scheduler)
